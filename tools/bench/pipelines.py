"""The timing harness shared by every benchmarked pipeline.

A pipeline is an object with five stage methods, called in this order on each batch:

    decode(paths) -> images        read + decode the files
    preprocess(images) -> batch    resize / crop / normalise / stack: the model's input
    model(batch) -> embeddings     the trunk
    knn(embeddings) -> scores      exact k-nearest-neighbour score against the bank
    decide(scores) -> decisions    score > threshold

Each stage is timed on its own with ``time.perf_counter``, and the whole batch (first stage start
to last stage end) is timed around them, so end-to-end >= the sum of the stages by construction;
the difference is the harness's own overhead (a few microseconds). Every pipeline runs over the
same image paths, in the same batches.

dn2's pipelines (those with a per-file ``load_one``) also run each pass through the runtime's
pipeline (:mod:`dn2.runtime.pipeline`: decode pool, model and kNN overlapped, as ``dn2 score``
runs); ``overlapped_img_per_s`` over the bare model is the end-to-end figure of a real run.

Each pass also times the pipeline's model stage *bare*: ``model`` called back to back on the
already-prepared batches, nothing else in between. That is the "bare model throughput" the
end-to-end rate is compared with; the model stage timed inside the pipeline can be slower
than bare (other stages' thread pools still spinning on the same cores), and that loss is part
of what end-to-end has to answer for.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

STAGES = ("decode", "preprocess", "model", "knn", "decision")


class Pipeline(Protocol):
    name: str
    kind: str  # "torch" | "fp32" | "int8"

    def decode(self, paths: Sequence[str]): ...
    def preprocess(self, images): ...
    def model(self, batch): ...
    def knn(self, embeddings): ...
    def decide(self, scores): ...


@dataclass
class Timings:
    """Raw per-batch timings of one pipeline at one batch size (seconds)."""

    name: str
    kind: str
    batch: int
    images: int = 0
    e2e: List[float] = field(default_factory=list)
    stages: Dict[str, List[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    bare_images: int = 0
    bare_model: List[float] = field(default_factory=list)
    overlap_images: int = 0  # dn2 pipelines: the same batches through runtime.pipeline
    overlap_pass_images: List[int] = field(default_factory=list)  # images per overlapped pass
    overlap: List[float] = field(default_factory=list)  # wall seconds per pass
    # one entry per pass: (e2e seconds, images, bare seconds, bare images), see run_all
    per_pass: List[Tuple[float, int, float, int]] = field(default_factory=list)

    def pass_rates(self) -> Dict[str, List[Optional[float]]]:
        """Per pass: sequential img/s, bare model img/s, overlapped img/s, and the two
        ratios to the bare model of the same pass (timed seconds apart, not minutes)."""
        seq = [n / t for t, n, _, _ in self.per_pass]
        bare = [n / t if t else None for _, _, t, n in self.per_pass]
        ovl = [n_img / t for t, n_img in zip(self.overlap, self.overlap_pass_images)]
        ovl = ovl if len(ovl) == len(self.per_pass) else [None] * len(self.per_pass)

        def over(a, b):
            return [round(x / y, 4) if x and y else None for x, y in zip(a, b)]

        return {
            "img_per_s": [round(x, 3) for x in seq],
            "bare_model_img_per_s": [None if x is None else round(x, 3) for x in bare],
            "overlapped_img_per_s": [None if x is None else round(x, 3) for x in ovl],
            "e2e_over_bare_model": over(seq, bare),
            "overlapped_over_bare_model": over(ovl, bare),
        }

    def summary(self) -> Dict[str, object]:
        """img/s, per-batch latency percentiles, per-image stage means, model-only throughput."""
        total = sum(self.e2e)
        stage_tot = {s: sum(v) for s, v in self.stages.items()}
        lat_ms = np.asarray(self.e2e) * 1e3
        return {
            "name": self.name,
            "kind": self.kind,
            "batch": self.batch,
            "images": self.images,
            "batches": len(self.e2e),
            "img_per_s": round(self.images / total, 3),
            "latency_ms_p50": round(float(np.percentile(lat_ms, 50)), 3),
            "latency_ms_p95": round(float(np.percentile(lat_ms, 95)), 3),
            "latency_unit": f"one batch of {self.batch} image(s), decode to decision",
            "e2e_ms_per_image": round(total / self.images * 1e3, 4),
            "stages_ms_per_image": {
                s: round(t / self.images * 1e3, 4) for s, t in stage_tot.items()
            },
            "stages_sum_ms_per_image": round(sum(stage_tot.values()) / self.images * 1e3, 4),
            "model_only_img_per_s": round(self.images / stage_tot["model"], 3),
            "e2e_over_model_only": round(stage_tot["model"] / total, 4),
            "bare_model_img_per_s": (
                round(self.bare_images / sum(self.bare_model), 3) if self.bare_model else None
            ),
            "e2e_over_bare_model": (
                round(self.images / total * sum(self.bare_model) / self.bare_images, 4)
                if self.bare_model
                else None
            ),
            # decode pool + model + kNN overlapped, as dn2 score runs (dn2.runtime.pipeline)
            "overlapped_img_per_s": (
                round(self.overlap_images / sum(self.overlap), 3) if self.overlap else None
            ),
            "overlapped_over_bare_model": (
                round(
                    self.overlap_images
                    / sum(self.overlap)
                    * sum(self.bare_model)
                    / self.bare_images,
                    4,
                )
                if self.overlap and self.bare_model
                else None
            ),
            "per_pass": self.pass_rates(),
        }


def make_batches(paths: Sequence[str], batch: int) -> List[List[str]]:
    """Full batches over ``paths``, wrapping around so the last batch is full too."""
    if batch < 1:
        raise ValueError(f"batch size must be >= 1, found {batch}")
    n = len(paths)
    if n == 0:
        raise ValueError("no benchmark images")
    count = math.ceil(n / batch) * batch
    idx = [i % n for i in range(count)]
    return [[paths[j] for j in idx[i : i + batch]] for i in range(0, count, batch)]


def run_batch(pipe: Pipeline, paths: Sequence[str]):
    """One batch through the five stages. Returns (stage seconds, e2e seconds, decisions)."""
    clock = time.perf_counter
    t_start = clock()
    images = pipe.decode(paths)
    t1 = clock()
    batch = pipe.preprocess(images)
    t2 = clock()
    emb = pipe.model(batch)
    t3 = clock()
    scores = pipe.knn(emb)
    t4 = clock()
    decisions = pipe.decide(scores)
    t_end = clock()
    stages = {
        "decode": t1 - t_start,
        "preprocess": t2 - t1,
        "model": t3 - t2,
        "knn": t4 - t3,
        "decision": t_end - t4,
    }
    return stages, t_end - t_start, decisions


def run_pass(pipe: Pipeline, batches: Sequence[Sequence[str]], timings: Timings) -> None:
    """Every batch once, appending to ``timings``."""
    for paths in batches:
        stages, e2e, decisions = run_batch(pipe, paths)
        if len(decisions) != len(paths):
            raise RuntimeError(
                f"{pipe.name}: {len(paths)} images in, {len(decisions)} decisions out"
            )
        timings.e2e.append(e2e)
        timings.images += len(paths)
        for s in STAGES:
            timings.stages[s].append(stages[s])


def run_overlapped(pipe: Pipeline, batches: Sequence[Sequence[str]], timings: Timings) -> None:
    """The same images through :func:`dn2.runtime.pipeline.overlapped` (pipelines with a
    per-file ``load_one``: dn2's): decode + resize in a pool ahead of the model, kNN and
    decisions beside the next batch's model call; one wall time for the whole pass."""
    from dn2.runtime.pipeline import overlapped

    flat = [p for b in batches for p in b]
    t0 = time.perf_counter()
    n = 0
    for b in overlapped(
        flat,
        pipe.load_one,
        pipe.model,
        tail=lambda e: pipe.decide(pipe.knn(e)),
        batch=timings.batch,
    ):
        if b.errors:
            raise RuntimeError(f"{pipe.name}: {b.errors[0][1]}")
        n += len(b.output)
    timings.overlap.append(time.perf_counter() - t0)
    if n != len(flat):
        raise RuntimeError(f"{pipe.name}: {len(flat)} images in, {n} decisions out")
    timings.overlap_images += n
    timings.overlap_pass_images.append(n)


def run_bare_model(pipe: Pipeline, inputs: Sequence, timings: Timings) -> None:
    """The model stage alone over prepared batches, back to back, appending to ``timings``."""
    clock = time.perf_counter
    for x in inputs:
        t0 = clock()
        pipe.model(x)
        timings.bare_model.append(clock() - t0)
        timings.bare_images += len(x)


def run_all(
    pipes: Sequence[Pipeline],
    paths: Sequence[str],
    batch_sizes: Sequence[int],
    passes: int,
    progress=None,
) -> List[Timings]:
    """Warm each (pipeline, batch) up on one batch, then time ``passes`` passes over all images,
    each pass followed by the same batches through the bare model stage.

    Passes are interleaved (pass 1 of every pipeline, then pass 2, ...) so that a change in
    machine load during the run spreads over all pipelines instead of hitting one, and every
    other pass runs the pipelines in reverse order, so a drift within a pass does not always
    favour the same ones. Each pass is also kept apart (``Timings.per_pass``): the report's
    ratios are medians of per-pass ratios, each from timings taken seconds apart.
    """
    plan = [(p, b, make_batches(paths, b)) for p in pipes for b in batch_sizes]
    results = {(p.name, b): Timings(p.name, p.kind, b) for p, b, _ in plan}
    prepared = {}
    for p, b, batches in plan:
        run_batch(p, batches[0])  # warm-up: allocators, thread pools, lazy init; not counted
        prepared[(p.name, b)] = [p.preprocess(p.decode(x)) for x in batches]  # not timed
    for k in range(passes):
        for p, b, batches in plan if k % 2 == 0 else plan[::-1]:
            if progress:
                progress(
                    f"pass {k + 1}/{passes}: {p.name} batch {b} ({len(batches)} batches)"
                    " + bare model"
                )
            t = results[(p.name, b)]
            before = (sum(t.e2e), t.images, sum(t.bare_model), t.bare_images)
            run_pass(p, batches, t)
            if hasattr(p, "load_one"):
                run_overlapped(p, batches, t)
            run_bare_model(p, prepared[(p.name, b)], t)
            after = (sum(t.e2e), t.images, sum(t.bare_model), t.bare_images)
            t.per_pass.append(tuple(type(a)(a - z) for a, z in zip(after, before)))
    return [results[(p.name, b)] for p, b, _ in plan]
