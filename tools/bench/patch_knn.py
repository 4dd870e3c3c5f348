"""The patch kNN kernel per image, the runtime's against the earlier three-pass form, same run.

Real textile patch features (PyPI conformal-clip-data, the model's ``patches`` output, full
view): a bank of ``--bank`` rows drawn from ``--train`` nominal images, queries the cells of
``--images`` held-out nominal images. Each kernel runs every image ``--reps`` times in turn
(interleaved, so machine load hits all alike) and the best ms / image is printed, with the
BLAS thread count applied by threadpoolctl.

* ``runtime``: ``dn2.runtime.patchscore.nearest_sq`` (one sgemm with the -2 and the bank
  norms folded in, the bank prepared once, a row minimum per block);
* ``three-pass``: the earlier form (sgemm, then ``*= -2`` and ``+= norms`` over the block, then
  the minimum; bank norms per call), kept here only as the reference;
* ``sgemm-only``: the bare ``q @ bank.T``, the floor of both;
* ``subgrid-S-xN``: ``dn2.runtime.patchscore.subgrid_sq`` for each ``--steps`` S and
  ``--seeds`` N (every S-th cell exact, the rest interpolated, the cells around the N x 10
  highest sub-grid cells and the top 10 exact), with how close it stays to every cell exact:
  in how many images its 10 highest cells are the exact kNN's 10 highest, and the largest
  relative shortfall of its top-10 mean (the image score) and of its max.

``--bundle B`` takes the bank of a fitted patch / both bundle instead (a greedy coreset of
block-weighted rows, as scoring sees it), the queries weighted the same.

    python -m dn2.tools.bench.patch_knn --model M.onnx [--bank 4096 | --bundle B]
        [--threads 1 2] [--steps 2] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def three_pass(x: np.ndarray, q: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    bn = np.einsum("ij,ij->i", x, x)
    out = np.empty(len(q), np.float32)
    step = max(1, block // max(1, len(x)))
    for i in range(0, len(q), step):
        qs = q[i : i + step]
        d = qs @ x.T
        d *= -2.0
        d += bn[None, :]
        out[i : i + step] = d.min(axis=1) + np.einsum("ij,ij->i", qs, qs)
    return np.maximum(out, 0.0, out=out)


def run(a) -> dict:
    import conformal_clip_data as ccd
    from threadpoolctl import threadpool_limits

    from dn2.runtime import patchscore
    from dn2.runtime.bank import build_bank
    from dn2.runtime.embedder import Embedder
    from dn2.runtime.patchscore import nearest_sq, patch_rows, reduce_cells, subgrid_sq
    from dn2.runtime.viewembed import ViewEmbedder
    from dn2.runtime.views import View

    noms = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    ve = ViewEmbedder(Embedder(a.model, threads=2), View("full"))

    grid = []

    def rows(paths):
        out = []
        for it in ve.paths(paths):
            grid[:] = it.patches.shape[2:]
            out.append(patch_rows(it.patches).reshape(-1, it.patches.shape[1]))
        return out

    queries = rows(noms[600 : 600 + a.images])
    if a.bundle:
        from dn2.runtime.detector import Detector

        ps = Detector.load(a.bundle, threads=2).view_scorer.patch
        bank = ps.bank
        if ps.weights is not None:
            queries = [np.ascontiguousarray(q * ps.weights) for q in queries]
    else:
        pool = np.concatenate(rows(noms[: a.train]))
        pick = np.random.default_rng(0).choice(len(pool), min(a.bank, len(pool)), replace=False)
        bank = build_bank(np.ascontiguousarray(pool[pick]), "exact")
    x = bank.data
    kernels = {
        "runtime": lambda q: nearest_sq(bank, q),
        "three-pass": lambda q: three_pass(x, q),
        "sgemm-only": lambda q: q @ x.T,
    }
    h, w = grid
    seeds0 = patchscore.SEEDS

    def sub(step, seeds):
        def f(q):
            patchscore.SEEDS = seeds
            try:
                return subgrid_sq(bank, q, h, w, 1, 10, step)
            finally:
                patchscore.SEEDS = seeds0

        return f

    for s in a.steps:
        for n in a.seeds:
            kernels[f"subgrid-{s}-x{n}"] = sub(s, n)
    ref = np.concatenate([three_pass(x, q) for q in queries])
    got = np.concatenate([nearest_sq(bank, q) for q in queries])
    out = {
        "cells": int(len(queries[0])),
        "bank": int(bank.n),
        "dim": int(bank.dim),
        "gflop_per_image": round(2 * len(queries[0]) * bank.n * bank.dim / 1e9, 2),
        "max_rel_diff_runtime_vs_three_pass": float(
            np.max(np.abs(got - ref) / np.maximum(ref, 1e-6 * ref.max()))
        ),
        "threads": {},
        "subgrid": {},
    }
    exact = [np.sqrt(nearest_sq(bank, q)) for q in queries]
    for name, f in kernels.items():
        if not name.startswith("subgrid"):
            continue
        same, short_top, short_max = 0, 0.0, 0.0
        for q, e in zip(queries, exact):
            g = np.sqrt(f(q))
            same += set(np.argsort(-g)[:10]) == set(np.argsort(-e)[:10])
            a10, b10 = (float(reduce_cells(v[None], "topk", 10)[0]) for v in (e, g))
            short_top = max(short_top, (a10 - b10) / a10)
            short_max = max(short_max, float((e.max() - g.max()) / e.max()))
        out["subgrid"][name] = {
            "top10_equal_images": f"{same}/{len(queries)}",
            "top10_mean_max_shortfall": round(short_top, 5),
            "max_max_shortfall": round(short_max, 5),
        }
        print(f"{name}: {out['subgrid'][name]}", file=sys.stderr, flush=True)
    for th in a.threads:
        best = {k: float("inf") for k in kernels}
        with threadpool_limits(th, "blas"):
            for _ in range(a.reps):
                for q in queries:
                    for k, f in kernels.items():
                        t = time.perf_counter()
                        f(q)
                        best[k] = min(best[k], time.perf_counter() - t)
        ms = {k: round(1000 * v, 1) for k, v in best.items()}
        ms["three-pass / runtime"] = round(best["three-pass"] / best["runtime"], 2)
        out["threads"][str(th)] = ms
        print(f"BLAS threads {th}: ms / image {ms}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.patch_knn",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--bank", type=int, default=4096)
    p.add_argument("--bundle", help="use this bundle's patch bank and weights")
    p.add_argument("--train", type=int, default=10)
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, nargs="*", default=[2])
    p.add_argument("--seeds", type=int, nargs="*", default=[2])
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = run(a)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
