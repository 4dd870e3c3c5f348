"""fp16 conversion and int8 static quantization of a verified fp32 dn2 model, each verified
against the fp32 reference before it may be written.

int8: onnxruntime ``quantize_static`` with the settings ``DEFAULT_INT8``
(``dn2.export.int8config.Int8Settings``: format, weight type, per-channel, 7-bit weights,
symmetric activations, calibration method, convs kept in float), chosen by measurement
(``python -m dn2.tools.studies.int8``, BENCHMARKS.md "int8 on a CPU without VNNI").

AVX2 without VNNI multiplies u8 x s8 pairs into saturating int16 (``vpmaddubsw``);
onnxruntime's ``session.x64quantprecision=1`` selects exact kernels, but they are slower.
The gate tries a fixed plan (``attempt_plan``): the default (fast) session with a growing
prefix of convolutions kept in float, then the exact kernels with the same prefixes; the
first attempt whose min cosine and kNN rank agreement reach the gate's int8 tolerances is
kept. The default session is only trusted on a CPU whose default kernels saturate (x86 with
AVX2 and no VNNI: a model verified there is verified for the worst case) or for settings that
cannot saturate; elsewhere only the exact kernels are tried. Same fp32 model, same calibration
images, same CPU: the same plan and the same measurements, hence the same choice. The choice,
its cosine and rank agreement and their margins over the tolerances are printed, written to
the export report (``quantize.choice``) and to the model metadata (``dn2.int8_choice``); exact
kernels, when chosen, go into ``dn2.ort_session_config`` for the runtime to apply.

A float prefix, not a hand-picked set: keeping single depthwise convs in the middle of
EfficientNet-Lite in float measured worse with onnxruntime's optimised kernels (0.87) than its
exact QDQ semantics promise (0.995), while a float prefix (one float->int8 boundary) runs as
the QDQ semantics say.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dn2.runtime.scoring import loo_knn_scores

from .gate import INT8_TARGET_RANK, TOLERANCES, Tolerance, spearman
from .int8config import Int8Settings, conv_names, quantize_with
from .verify import (
    INT8_MIN_COSINE,
    INT8_MIN_SPEARMAN,
    VerificationError,
    compare,
    gated,
    ort_embed,
)

ORT_INT8_CONFIG = {"session.x64quantprecision": "1"}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8")
FLOAT_PREFIXES = (0, 4, 8, 12, 16, 24, 32)  # leading convs kept in float, tried in this order
# The settings the gate tries first (fast kernels), and its last resort (exact kernels); why
# these: BENCHMARKS.md "int8 on a CPU without VNNI" (python -m dn2.tools.studies.int8).
DEFAULT_INT8 = Int8Settings(reduce_range=True)
FALLBACK_INT8 = Int8Settings()
MIN_CALIB = 4  # kNN rank agreement needs a few images; int8 ranges from fewer are guesswork
KNN_K = 2  # the paper's k (section 4.6 uses k=2)


def to_fp16(src: str, dst: str) -> None:
    """Convert weights and activations to float16; the uint8 input and float32 output stay."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" notices
        half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(dst))


def verify_fp16(
    fp32_path: str,
    fp16_path: str,
    names: Sequence[str],
    images: np.ndarray,
    tolerance: Optional[Tolerance] = None,
) -> Dict:
    """fp16 vs the verified fp32 model on ``images``: cosine, max-abs error and the kNN-score
    rank agreement of the fp16 table entry (``tolerance`` overrides it); raises or reports."""
    ref = ort_embed(fp32_path, images)
    out = ort_embed(fp16_path, images)
    return gated(ref, out, names, "fp16 vs fp32", tolerance or TOLERANCES["fp16"])


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty when unreadable)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return flags


def default_int8_kernels_saturate(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when onnxruntime's default u8 x s8 kernels on this CPU saturate (x86 with AVX2 and
    no VNNI): then a model that passes the gate with the default session passes everywhere."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags(cpuinfo)
    return "avx2" in flags and not flags.intersection(VNNI_FLAGS)


def knn_scores(emb: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Leave-one-out kNN score of each row against the others (paper eq. 2): the runtime's."""
    return loo_knn_scores(emb, k)


def attempt_plan(n_convs: int, saturating: bool) -> List[Tuple[Int8Settings, Dict[str, str]]]:
    """The gate's attempts, in the order tried. Kept: among the fast attempts the first that
    passes and reaches the rank target (``INT8_TARGET_RANK``), else the first fast one that
    passed; only when no fast attempt passed, the first exact one that passes.

    ``DEFAULT_INT8`` on the default (fast) kernels with a growing float prefix
    (``FLOAT_PREFIXES``); then, as the last resort, ``FALLBACK_INT8`` (full 8-bit weights) on
    the exact kernels with the same prefixes. The default session is trusted only where it is
    the worst case (a CPU whose default kernels saturate) or for settings that cannot saturate
    at all; otherwise those attempts run on the exact kernels. A fixed list: the same model,
    calibration images and CPU always give the same choice (no timing, no randomness)."""
    prefixes = [k for k in FLOAT_PREFIXES if k <= n_convs * 3 // 4] or [0]
    exact = dict(ORT_INT8_CONFIG)
    first = {} if saturating or DEFAULT_INT8.saturation_free else exact
    plan = [(DEFAULT_INT8.with_float(k), dict(first)) for k in prefixes]
    return plan + [(FALLBACK_INT8.with_float(k), dict(exact)) for k in prefixes]


def images_digest(images: np.ndarray) -> str:
    """sha256 of the calibration images as the quantizer sees them (order included)."""
    import hashlib

    h = hashlib.sha256(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def _choice(
    settings: Int8Settings,
    config: Dict[str, str],
    min_cos: float,
    rho: float,
    index: int,
    n_attempts: int,
    digest: str,
) -> Dict[str, object]:
    """What the gate kept and by how much it passed: the export report's and the metadata's."""
    return {
        "settings": settings.label(),
        "quantizer": settings.to_json(),
        "kernels": "exact" if config else "default",
        "ort_session_config": dict(config),
        "min_cosine": round(min_cos, 5),
        "knn_spearman": round(rho, 5),
        "margin": {
            "cosine": round(min_cos - INT8_MIN_COSINE, 5),
            "knn_spearman": round(rho - INT8_MIN_SPEARMAN, 5),
        },
        "tolerance": {"min_cosine": INT8_MIN_COSINE, "min_knn_spearman": INT8_MIN_SPEARMAN},
        "target_knn_spearman": INT8_TARGET_RANK,
        "target_met": bool(rho >= INT8_TARGET_RANK),
        "attempt": index + 1,
        "attempts_planned": n_attempts,
        "calib_sha256": digest,
    }


def describe_choice(choice: Dict[str, object]) -> str:
    m = choice["margin"]
    return (
        f"int8 choice: {choice['settings']} on {choice['kernels']} onnxruntime kernels, "
        f"min cosine {choice['min_cosine']:.4f} (margin {m['cosine']:+.4f}), kNN Spearman "
        f"{choice['knn_spearman']:.3f} (margin {m['knn_spearman']:+.3f}); attempt "
        f"{choice['attempt']} of {choice['attempts_planned']}"
    )


def quantize_int8(
    fp32_path: str,
    dst: str,
    calib: np.ndarray,
    calib_names: Sequence[str],
    photos: np.ndarray,
    photo_names: Sequence[str],
    log: Callable[[str], None] = lambda m: None,
) -> Dict[str, object]:
    """Quantize ``fp32_path`` into ``dst``, verified; returns the report or raises."""
    import onnx

    if len(calib) < MIN_CALIB:
        raise VerificationError(
            f"int8 calibration needs at least {MIN_CALIB} images, found {len(calib)}"
        )
    model = onnx.load(str(fp32_path), load_external_data=False)
    n_convs = len(conv_names(model))
    ref_photos, ref_calib = ort_embed(fp32_path, photos), ort_embed(fp32_path, calib)
    knn_ref = knn_scores(ref_calib)
    saturating = default_int8_kernels_saturate()
    plan = attempt_plan(n_convs, saturating)
    digest = images_digest(calib)
    tried: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="dn2-int8-") as tmp:
        made = [None]  # the settings dst currently holds; ranges are measured once (cached)

        def make(settings: Int8Settings) -> None:
            if settings != made[0]:
                quantize_with(fp32_path, dst, calib, settings, Path(tmp))
                made[0] = settings

        def measure(settings: Int8Settings, config: Dict[str, str]) -> Dict[str, object]:
            make(settings)
            on_photos = compare(ref_photos, ort_embed(dst, photos, config), photo_names)
            out_calib = ort_embed(dst, calib, config)
            on_calib = compare(ref_calib, out_calib, calib_names)
            rho = spearman(knn_ref, knn_scores(out_calib))
            min_cos = min(on_photos["min_cosine"], on_calib["min_cosine"])
            log(
                f"int8 {settings.label()} (first {settings.float_first}/{n_convs} convs in "
                f"float), {'exact' if config else 'default'} kernels: min cosine {min_cos:.4f} "
                f"(photos {on_photos['min_cosine']:.4f}, calib {on_calib['min_cosine']:.4f}), "
                f"kNN Spearman {rho:.3f}"
            )
            return {
                "settings": settings,
                "config": config,
                "min_cosine": min_cos,
                "knn_spearman": rho,
                "photos": on_photos,
                "calib": on_calib,
                "passed": min_cos >= INT8_MIN_COSINE and rho >= INT8_MIN_SPEARMAN,
                "index": len(tried),
            }

        # fast attempts: the first that reaches the rank target, else the first that passed;
        # exact attempts (only when no fast one passed): the first that passes
        chosen, first_fast = None, None
        for settings, config in plan:
            if config and first_fast is not None:
                break
            a = measure(settings, config)
            tried.append(
                {
                    "settings": settings.label(),
                    "float_convs": settings.float_first,
                    "ort_session_config": config,
                    "min_cosine": a["min_cosine"],
                    "knn_spearman": a["knn_spearman"],
                    "passed": a["passed"],
                }
            )
            if a["passed"] and (config or a["knn_spearman"] >= INT8_TARGET_RANK):
                chosen = a
                break
            if a["passed"] and first_fast is None:
                first_fast = a
        chosen = chosen or first_fast
        if chosen is None:
            Path(dst).unlink(missing_ok=True)
            best = max(
                tried,
                key=lambda a: min(
                    a["min_cosine"] - INT8_MIN_COSINE, a["knn_spearman"] - INT8_MIN_SPEARMAN
                ),
            )
            raise VerificationError(
                f"verification failed, int8 vs fp32: best attempt ({best['settings']}, "
                f"{best['float_convs']} convs in float) reached min cosine "
                f"{best['min_cosine']:.4f} and kNN Spearman {best['knn_spearman']:.3f}; "
                f"tolerance cosine >= {INT8_MIN_COSINE}, Spearman >= {INT8_MIN_SPEARMAN}. "
                f"Calibrate on more images like yours (calib DIR) or use precision fp32. "
                f"No model was written.",
                params=("calib", "precision"),
            )
        make(chosen["settings"])  # dst may hold a later attempt
    settings, config, rho = chosen["settings"], chosen["config"], chosen["knn_spearman"]
    on_photos, on_calib, min_cos = chosen["photos"], chosen["calib"], chosen["min_cosine"]
    choice = _choice(settings, config, min_cos, rho, chosen["index"], len(plan), digest)
    log(describe_choice(choice))
    default = on_photos if not config else compare(ref_photos, ort_embed(dst, photos), photo_names)
    return {
        "method": f"onnxruntime quantize_static, {settings.label()} ({settings.describe()})",
        "calib_images": len(calib),
        "float_convs": settings.float_first,
        "int8_convs": n_convs - settings.float_first - settings.float_last,
        "photos": on_photos,
        "calib": on_calib,
        "knn_spearman": rho,
        "ort_session_config": dict(config),
        "default_kernels_saturate": saturating,
        "photos_default_session": default,
        "tolerance": choice["tolerance"],
        "choice": choice,
        "attempts": tried,
        "passed": True,
    }
