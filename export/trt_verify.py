"""The gate an engine passes before it is kept: agreement with the fp32 ONNX reference.

Two numbers, on real images prepared the runtime's way:

* embedding cosine per image between engine and reference (onnxruntime CPU, fp32): what the
  kNN distances are made of;
* rank agreement (Spearman) of the DN2 anomaly scores: each image's leave-one-out kNN score
  (paper eq. 2, mean squared L2 to its k nearest among the other images) computed from the
  engine's embeddings vs from the reference's. A detector cares about the order of scores
  against a threshold, so that order must survive the lower precision.

Pure numpy; the GPU part (running the engine) lives in ``dn2.export.tensorrt``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import numpy as np

from dn2.runtime.errors import ModelError
from dn2.runtime.scoring import loo_knn_scores as runtime_loo

from .gate import MIN_RANK_IMAGES, TOLERANCES, Tolerance, spearman  # noqa: F401 (re-exported)

# One table for every gate (dn2.export.gate); a TensorRT fp32 engine may use TF32 tactics.
ENGINE_TOLERANCE = {"fp32": "tf32", "fp16": "fp16", "int8": "int8"}
MIN_VERIFY_IMAGES = MIN_RANK_IMAGES  # fewer cannot give a meaningful rank correlation


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = np.maximum(na * nb, 1e-30)
    cos = np.einsum("ij,ij->i", a, b) / denom
    cos[(na == 0) & (nb == 0)] = 1.0  # both zero: identical
    return cos


def loo_knn_scores(emb: np.ndarray, k: int = 2) -> np.ndarray:
    """Each row's mean squared L2 distance to its k nearest other rows (paper eq. 2): the
    runtime's own leave-one-out scores (``dn2.runtime.scoring.loo_knn_scores``)."""
    e = np.asarray(emb)
    if len(e) <= k:
        raise ModelError(
            f"leave-one-out kNN with k={k} needs more than {k} embeddings, found {len(e)}"
        )
    return runtime_loo(e, k)


def compare_embeddings(
    ref: np.ndarray,
    test: np.ndarray,
    precision: str,
    tolerance: Optional[Tolerance] = None,
    k: int = 2,
) -> dict:
    """Agreement report of ``test`` against ``ref`` (both [N, D]); ``passed`` says the verdict."""
    ref, test = np.asarray(ref), np.asarray(test)
    if ref.shape != test.shape or ref.ndim != 2:
        raise ModelError(f"engine output {test.shape} does not match the reference {ref.shape}")
    if len(ref) < MIN_VERIFY_IMAGES:
        raise ModelError(
            f"verification needs at least {MIN_VERIFY_IMAGES} images, found {len(ref)}"
        )
    if not np.isfinite(test).all():
        bad = int((~np.isfinite(test)).any(1).sum())
        return {
            "precision": precision,
            "n": len(ref),
            "passed": False,
            "problem": f"{bad} of {len(ref)} engine embeddings contain NaN/inf",
        }
    tol = tolerance or TOLERANCES[ENGINE_TOLERANCE.get(precision, precision)]
    cos = row_cosine(ref, test)
    rho = spearman(loo_knn_scores(ref, k), loo_knn_scores(test, k))
    rel = np.abs(ref - test).max() / max(float(np.abs(ref).max()), 1e-30)
    passed = bool(cos.min() >= tol.min_cosine and rho >= tol.min_rank)
    return {
        "precision": precision,
        "n": int(len(ref)),
        "k": k,
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "rank_spearman": float(rho),
        "max_abs_rel": float(rel),
        "tolerance": asdict(tol),
        "passed": passed,
    }


def describe(report: dict) -> str:
    if "problem" in report:
        return f"{report['precision']} engine: {report['problem']}"
    t = report["tolerance"]
    return (
        f"{report['precision']} engine vs fp32 ONNX on {report['n']} images: cosine min "
        f"{report['min_cosine']:.6f} (need >= {t['min_cosine']}), mean {report['mean_cosine']:.6f}; "
        f"kNN-score rank agreement rho {report['rank_spearman']:.4f} (need >= {t['min_rank']})"
    )


def default_verify_images() -> List[Path]:
    """Real photographs and textures shipped inside scikit-image (offline, no download)."""
    try:
        import skimage.data
    except ImportError:
        return []
    folder = Path(skimage.data.__file__).parent
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in (".png", ".jpg") and p.stat().st_size > 2000
    )
