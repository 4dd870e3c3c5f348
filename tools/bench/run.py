"""run_bench(): the whole benchmark as one library call (dn2-bench is a thin CLI over it).

Order: machine load and sgemm peak -> frames -> models (export or reuse) -> FLOPs -> bank ->
the three pipelines -> untimed agreement check -> interleaved timed passes -> sgemm again
(the higher of the two peaks is the yardstick, so a busy machine cannot flatter the model stage).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from dn2.runtime.errors import Dn2Error

from . import report as report_mod
from .pipelines import run_all

QUICK = {"n_images": 16, "passes": 1}
FULL = {"n_images": 64, "passes": 3}
DEFAULT_BANK = 5000  # about one class of CIFAR-10 / Fashion-MNIST training data (paper section 4)


def _stderr(msg: str) -> None:
    print(f"[dn2-bench] {msg}", file=sys.stderr, flush=True)


def make_bank(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """A bank of ``n`` non-negative vectors (pooled ReLU features are non-negative). Exact kNN
    costs the same whatever the values, so random vectors time it honestly."""
    return np.random.default_rng(seed).random((n, dim), dtype=np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}


def _agreement(pipes, paths) -> Dict[str, object]:
    """Embedding cosines: torch_vs_fp32, fp32_vs_int8, and fp32_vs_fp32_jpeg_draft (same model,
    full vs reduced-scale JPEG decode) per precision when those rows run."""
    label = {
        p.name: p.name.replace("torch-eager", "torch").replace("dn2-", "").replace("-", "_")
        for p in pipes
    }
    embs = {label[p.name]: np.asarray(p.model(p.preprocess(p.decode(paths)))) for p in pipes}
    pairs = [("torch", "fp32"), ("fp32", "int8")] + [
        (n[: -len("_jpeg_draft")], n) for n in embs if n.endswith("_jpeg_draft")
    ]
    return {f"{a}_vs_{b}": _cosines(embs[a], embs[b]) for a, b in pairs if a in embs and b in embs}


def run_bench(
    arch: str,
    weights: str = "none",
    *,
    input_size: int = 224,
    threads: int = 2,
    quick: bool = False,
    images_dir: Optional[str] = None,
    frame_size: Tuple[int, int] = (1280, 720),
    bank_size: int = DEFAULT_BANK,
    k: int = 2,
    n_images: Optional[int] = None,
    passes: Optional[int] = None,
    batch_sizes: Sequence[int] = (1, 8),
    precisions: Sequence[str] = ("fp32", "int8"),
    work_dir: Optional[str] = None,
    jpeg_draft: bool = False,
    log: Callable[[str], None] = _stderr,
) -> Dict[str, object]:
    from .frames import make_frames
    from .models import export_models, model_flops, torch_trunk
    from .sgemm import DEFAULT_SIZES, QUICK_SIZES, measure_sgemm_peak

    if threads < 1:
        raise Dn2Error(f"--threads must be >= 1, found {threads}")
    if bank_size < max(2, k):
        raise Dn2Error(f"--bank-size must be at least 2 and at least k={k}, found {bank_size}")
    preset = QUICK if quick else FULL
    n_images = n_images or preset["n_images"]
    passes = passes or preset["passes"]
    load_start = [round(x, 2) for x in os.getloadavg()]
    sizes = QUICK_SIZES if quick else DEFAULT_SIZES
    log(f"load average {load_start}; measuring sgemm peak at {threads} threads")
    sgemm = measure_sgemm_peak(threads, sizes)

    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dn2-bench-")
        work_dir = tmp.name
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if images_dir:
            from dn2.runtime.images import find_images

            paths, problems = find_images([images_dir])
            for p, why in problems:
                log(f"skipping {p}: {why}")
            if not paths:
                raise Dn2Error(f"--images {images_dir}: expected image files, found none")
            paths = paths[:n_images] if n_images else paths
            source, calib_dir = images_dir, images_dir
        else:
            calib_dir = work / "frames"
            paths = make_frames(calib_dir, n_images, frame_size)
            source = "scikit-image photos as JPEG frames"
        fsize = f"{frame_size[0]}x{frame_size[1]}" if not images_dir else "as found"
        log(f"{len(paths)} images; models in {work}")

        models = export_models(arch, weights, input_size, work, precisions, str(calib_dir), log)
        flops = model_flops(models["fp32"]["path"]) if "fp32" in models else None
        trunk, spec = torch_trunk(arch, weights)
        bank = make_bank(bank_size, spec.dim)
        threshold = float(np.median(bank.sum(1)))  # any value: the decision costs the same

        from .dn2pipe import Dn2Pipeline
        from .torchref import TorchEagerPipeline

        pipes = [
            TorchEagerPipeline(trunk, input_size, spec.mean, spec.std, bank, k, threshold, threads)
        ]
        for prec in precisions:
            pipes.append(
                Dn2Pipeline(
                    models[prec]["path"],
                    prec,
                    bank,
                    k,
                    threshold,
                    threads,
                    batch_size=max(batch_sizes),
                )
            )
        if jpeg_draft:  # the opt-in reduced-scale JPEG decode, same sessions and bank
            pipes += [
                Dn2Pipeline(
                    None,
                    p.kind,
                    None,
                    k,
                    threshold,
                    threads,
                    max(batch_sizes),
                    jpeg_draft=True,
                    share=p,
                )
                for p in pipes[1:]
            ]
        agreement = _agreement(pipes, paths[:8])
        timings = run_all(pipes, paths, batch_sizes, passes, progress=log)
        log("measuring sgemm peak again")
        sgemm_end = measure_sgemm_peak(threads, sizes)
    finally:
        if tmp is not None:
            tmp.cleanup()

    sgemm = dict(
        sgemm,
        gflops_start=sgemm["gflops"],
        gflops_end=sgemm_end["gflops"],
        gflops=max(sgemm["gflops"], sgemm_end["gflops"]),
        per_size_end=sgemm_end["per_size"],
    )
    config = {
        "arch": arch,
        "weights": weights,
        "input_size": input_size,
        "threads": threads,
        "quick": quick,
        "n_images": len(paths),
        "passes": passes,
        "batch_sizes": list(batch_sizes),
        "frame_size": fsize,
        "images_source": source,
        "bank_size": bank_size,
        "dim": spec.dim,
        "k": k,
        "jpeg_draft_rows": jpeg_draft,
        "load_avg_start": load_start,
        "models": {
            p: {"file": os.path.basename(m["path"]), "export_s": m["export_s"]}
            for p, m in models.items()
        },
    }
    return report_mod.build_report(
        config, report_mod.machine_info(), sgemm, flops, [t.summary() for t in timings], agreement
    )
