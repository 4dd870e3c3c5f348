"""The verification gate: the exported graph must agree with its reference before it is written.

* fp32: torch (the graph module, eager) vs onnxruntime on the ONNX file.
* fp16 / int8: the converted ONNX vs the verified fp32 ONNX (int8's search: ``quantize.py``).

Each gate checks its entry of the one tolerance table (``dn2.export.gate.TOLERANCES``): the
per-image cosine, the max-abs error where the entry has one, and where it has ``min_rank`` the
rank agreement of the runtime's leave-one-out kNN scores (``gate.rank_agreement``).

Inputs are real photos (scikit-image's samples, prepared like runtime frames) plus seeded
uniform noise that exercises the whole uint8 range. Errors are measured per image:
max-abs error relative to the largest |embedding| of the reference (scale-free: random-weight
trunks produce much larger embeddings than trained ones) and cosine similarity.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from dn2.runtime.contract import embedding_tensor
from dn2.runtime.errors import Dn2Error

from .gate import MIN_RANK_IMAGES, TOLERANCES, Tolerance, rank_agreement
from .samples import random_images, sample_photos

# The tolerances are the gate's one table (dn2.export.gate.TOLERANCES, reasons there).
FP32_MAX_ABS_REL = TOLERANCES["fp32"].max_abs_rel
FP32_MIN_COSINE = TOLERANCES["fp32"].min_cosine
FP16_MAX_ABS_REL = TOLERANCES["fp16"].max_abs_rel
FP16_MIN_COSINE = TOLERANCES["fp16"].min_cosine
INT8_MIN_COSINE = TOLERANCES["int8"].min_cosine
INT8_MIN_SPEARMAN = TOLERANCES["int8"].min_rank
N_RANDOM = 4
BATCH = 8


class VerificationError(Dn2Error):
    """The exported model disagrees with its reference beyond tolerance; nothing was written."""


def verification_inputs(size: int):
    """(names, uint8 [N, size, size, 3] BGR): the sample photos then seeded noise images."""
    names, photos = sample_photos(size)
    noise = random_images(N_RANDOM, size, seed=0)
    return names + [f"random{i}" for i in range(N_RANDOM)], np.concatenate([photos, noise])


def torch_embed(graph, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            outs.append(
                graph(torch.from_numpy(np.ascontiguousarray(images[i : i + batch]))).numpy()
            )
    return np.concatenate(outs).astype(np.float32)


def ort_session(path: str, config: Optional[Dict[str, str]] = None, threads: Optional[int] = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no per-initializer warnings on stderr
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_embed(
    path: str,
    images: np.ndarray,
    config: Optional[Dict[str, str]] = None,
    batch: int = BATCH,
    threads: Optional[int] = None,
) -> np.ndarray:
    sess = ort_session(path, config, threads)
    name = sess.get_inputs()[0].name
    emb = embedding_tensor([o.name for o in sess.get_outputs()])
    outs = [sess.run([emb], {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(outs).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-30)


def compare(ref: np.ndarray, out: np.ndarray, names: Sequence[str]) -> Dict[str, object]:
    """Agreement statistics of ``out`` against ``ref`` (both [N, D])."""
    if ref.shape != out.shape:
        return {
            "shape_ref": list(ref.shape),
            "shape_out": list(out.shape),
            "finite": False,
            "max_abs": float("inf"),
            "max_abs_rel": float("inf"),
            "min_cosine": -1.0,
            "mean_cosine": -1.0,
            "worst": None,
        }
    finite = bool(np.isfinite(out).all())
    err = np.abs(out.astype(np.float64) - ref)
    cos = (
        cosines(ref.astype(np.float64), out.astype(np.float64))
        if finite
        else np.full(len(ref), -1.0)
    )
    scale = float(np.abs(ref).max()) or 1.0
    worst = int(np.argmin(cos))
    return {
        "n": int(len(ref)),
        "finite": finite,
        "max_abs": float(err.max()) if finite else float("inf"),
        "max_abs_rel": float(err.max() / scale) if finite else float("inf"),
        "ref_max_abs": scale,
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "worst": names[worst],
    }


def check(
    stats: Dict[str, object],
    what: str,
    max_abs_rel: Optional[float],
    min_cosine: float,
    min_rank: Optional[float] = None,
) -> Dict[str, object]:
    """Raise VerificationError when ``stats`` break the tolerances; else return them annotated.
    ``min_rank`` applies to ``stats["knn_spearman"]`` when :func:`gated` measured it."""
    tol = {"max_abs_rel": max_abs_rel, "min_cosine": min_cosine}
    if min_rank is not None:
        tol["min_knn_spearman"] = min_rank
    stats = dict(stats, tolerance=tol)
    problems = []
    if not stats["finite"]:
        problems.append("non-finite outputs (inf/nan)")
    if max_abs_rel is not None and stats["max_abs_rel"] > max_abs_rel:
        problems.append(
            f"max-abs error {stats['max_abs']:.3g} = {stats['max_abs_rel']:.3g} of "
            f"the largest |embedding| (tolerance {max_abs_rel:g})"
        )
    if stats["min_cosine"] < min_cosine:
        problems.append(
            f"minimum cosine {stats['min_cosine']:.5f} on {stats['worst']} (tolerance {min_cosine})"
        )
    rho = stats.get("knn_spearman")
    if min_rank is not None and rho is not None and rho < min_rank:
        problems.append(
            f"kNN-score rank agreement (Spearman of the leave-one-out scores) {rho:.4f} "
            f"(tolerance {min_rank})"
        )
    if problems:
        raise VerificationError(
            f"verification failed, {what}: " + "; ".join(problems) + ". No model was written."
        )
    stats["passed"] = True
    return stats


def gated(
    ref: np.ndarray, out: np.ndarray, names: Sequence[str], what: str, tol: Tolerance
) -> Dict[str, object]:
    """``compare`` + the kNN rank agreement (where ``tol`` has one) + ``check`` against ``tol``:
    the embedding gate of every precision."""
    stats = compare(ref, out, names)
    if tol.min_rank is not None and ref.shape == out.shape:
        ok = stats["finite"] and len(ref) >= MIN_RANK_IMAGES
        stats["knn_spearman"] = rank_agreement(ref, out) if ok else 0.0
    return check(stats, what, tol.max_abs_rel, tol.min_cosine, tol.min_rank)


def verify_fp32(graph, onnx_path: str, size: int) -> Dict[str, object]:
    """torch vs onnxruntime on photos + noise; returns the stats or raises VerificationError."""
    names, images = verification_inputs(size)
    ref = torch_embed(graph, images)
    out = ort_embed(onnx_path, images)
    return gated(ref, out, names, "onnxruntime fp32 vs torch", TOLERANCES["fp32"])


# -- the ``patches`` output (dn2-export --patches) ----------------------------------------------
def torch_outputs(graph, images: np.ndarray, batch: int = BATCH) -> Dict[str, np.ndarray]:
    """Every output of a graph that returns (embedding, patches)."""
    import torch

    from dn2.runtime.modelmeta import OUTPUT_NAME, PATCHES_NAME

    embs, pats = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            e, p = graph(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))
            embs.append(e.numpy())
            pats.append(p.numpy())
    return {
        OUTPUT_NAME: np.concatenate(embs).astype(np.float32),
        PATCHES_NAME: np.concatenate(pats).astype(np.float32),
    }


def ort_outputs(
    path: str, images: np.ndarray, config: Optional[Dict[str, str]] = None, batch: int = BATCH
) -> Dict[str, np.ndarray]:
    """Every output of the ONNX file at ``path``, by name."""
    sess = ort_session(path, config)
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(None, {name: images[i : i + batch]}) for i in range(0, len(images), batch)]
    return {n: np.concatenate([r[j] for r in runs]).astype(np.float32) for j, n in enumerate(names)}


def compare_patches(ref: np.ndarray, out: np.ndarray, names: Sequence[str]) -> Dict[str, object]:
    """``compare`` on each image's whole map (flattened), plus the per-patch cosine spread
    (every C-vector of every cell: a few wrong cells barely move the flattened cosine)."""
    flat = compare(ref.reshape(len(ref), -1), out.reshape(len(out), -1), names)
    if ref.shape == out.shape and flat["finite"]:
        r = ref.transpose(0, 2, 3, 1).reshape(-1, ref.shape[1]).astype(np.float64)
        o = out.transpose(0, 2, 3, 1).reshape(-1, ref.shape[1]).astype(np.float64)
        c = cosines(r, o)
        flat["patch_cosine_p01"] = float(np.quantile(c, 0.01))
        flat["patch_cosine_min"] = float(c.min())
        flat["shape"] = list(ref.shape[1:])
    return flat


def verify_fp32_patches(graph, onnx_path: str, size: int) -> Dict[str, object]:
    """torch vs onnxruntime for both outputs of a patch graph; raises VerificationError."""
    from dn2.runtime.modelmeta import OUTPUT_NAME, PATCHES_NAME

    names, images = verification_inputs(size)
    ref, out = torch_outputs(graph, images), ort_outputs(onnx_path, images)
    stats = gated(
        ref[OUTPUT_NAME], out[OUTPUT_NAME], names, "onnxruntime fp32 vs torch", TOLERANCES["fp32"]
    )
    stats["patches"] = check(
        compare_patches(ref[PATCHES_NAME], out[PATCHES_NAME], names),
        "patches output, onnxruntime fp32 vs torch",
        FP32_MAX_ABS_REL,
        FP32_MIN_COSINE,
    )
    return stats


def verify_patches_against(
    fp32_path: str,
    other_path: str,
    images: np.ndarray,
    names: Sequence[str],
    what: str,
    max_abs_rel: Optional[float],
    min_cosine: float,
    config: Optional[Dict[str, str]] = None,
) -> Dict:
    """The ``patches`` output of a converted model (fp16 / int8) vs the verified fp32 one."""
    from dn2.runtime.modelmeta import PATCHES_NAME

    ref = ort_outputs(fp32_path, images)[PATCHES_NAME]
    out = ort_outputs(other_path, images, config)[PATCHES_NAME]
    return check(
        compare_patches(ref, out, names), f"patches output, {what}", max_abs_rel, min_cosine
    )
