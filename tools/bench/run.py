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
    full vs reduced-scale JPEG decode) per precision when those rows run; and the int8 gate's
    measure on every bench frame, ``fp32_vs_int8_rank`` (Spearman of leave-one-out kNN scores)."""
    from dn2.export.gate import MIN_RANK_IMAGES, rank_agreement

    label = {
        p.name: p.name.replace("torch-eager", "torch").replace("dn2-", "").replace("-", "_")
        for p in pipes
    }
    embs = {}
    for p in pipes:
        chunks = [paths[i : i + 8] for i in range(0, len(paths), 8)]
        embs[label[p.name]] = np.concatenate(
            [np.asarray(p.model(p.preprocess(p.decode(c)))) for c in chunks]
        )
    pairs = [("torch", "fp32"), ("fp32", "int8")] + [
        (n[: -len("_jpeg_draft")], n) for n in embs if n.endswith("_jpeg_draft")
    ]
    out: Dict[str, object] = {
        f"{a}_vs_{b}": _cosines(embs[a], embs[b]) for a, b in pairs if a in embs and b in embs
    }
    if "fp32" in embs and "int8" in embs and len(paths) >= MIN_RANK_IMAGES:
        rho = rank_agreement(embs["fp32"], embs["int8"])
        out["fp32_vs_int8_rank"] = {"rho": round(rho, 4), "n": len(paths)}
    return out


def _int8_choice(models) -> Optional[Dict[str, object]]:
    """The export gate's int8 choice, from the int8 model's metadata (reused models too)."""
    import json

    from dn2.runtime.modelmeta import K_INT8_CHOICE, read_model_meta

    if "int8" not in models:
        return None
    text = read_model_meta(models["int8"]["path"]).extra.get(K_INT8_CHOICE)
    return json.loads(text) if text else None


def read_streams(path: Optional[str]) -> Optional[Dict[str, object]]:
    """The multi-camera figure from ``bench.watch --streams N --json PATH``'s report."""
    import json

    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
        live = data.get("live") or {}
        return {
            "streams": int(data["streams"]),
            "batch": int(data["batch"]),
            "ratio": float(data["ratio"]),
            "per_camera_p95_ms": {k: v.get("latency_p95_ms") for k, v in live.items()} or None,
            "source": str(path),
            "error": None,
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {
            "error": f"--streams-json {path}: expected a bench.watch --streams JSON "
            f"report with streams, batch and ratio; {type(exc).__name__}: {exc}"
        }


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
    cpu_split_rows: bool = False,
    accuracy: bool = False,
    streams_json: Optional[str] = None,
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
        if cpu_split_rows:  # the other CPU batch split setting (dn2.runtime.ort_backend)
            for p in [q for q in pipes[1:] if q.embedder.provider == "CPUExecutionProvider"]:
                split = getattr(p.embedder.backend, "split", 0) == 0
                pipes.append(
                    Dn2Pipeline(
                        models[p.kind]["path"],
                        p.kind,
                        bank,
                        k,
                        threshold,
                        threads,
                        max(batch_sizes),
                        name=f"dn2-{p.kind}-" + ("split" if split else "1session"),
                        cpu_split=split,
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
        agreement = _agreement(pipes, paths)
        timings = run_all(pipes, paths, batch_sizes, passes, progress=log)
        log("measuring sgemm peak again")
        sgemm_end = measure_sgemm_peak(threads, sizes)
        int8_choice = _int8_choice(models)
        acc = None
        if accuracy:  # after the timed passes: its export and embedding never overlap them
            from .int8_accuracy import int8_accuracy

            acc = int8_accuracy(work, threads, log)
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
        "cpu_split_rows": cpu_split_rows,
        "load_avg_start": load_start,
        "models": {
            p: {"file": os.path.basename(m["path"]), "export_s": m["export_s"]}
            for p, m in models.items()
        },
    }
    return report_mod.build_report(
        config,
        report_mod.machine_info(),
        sgemm,
        flops,
        [t.summary() for t in timings],
        agreement,
        accuracy=acc,
        streams=read_streams(streams_json),
        int8_choice=int8_choice,
    )
