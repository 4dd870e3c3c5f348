"""fp16 conversion and int8 static quantization of a verified fp32 dn2 model, each verified
against the fp32 reference before it may be written.

int8: onnxruntime ``quantize_static``, QDQ, per-channel int8 weights, uint8 activations, MinMax
calibration. Measured on this 2-core AVX2 machine (no VNNI), min cosine to fp32 over the 16
sample photos, efficientnet_lite0 (real weights) / resnet101 (random weights):

  all convs int8, default session                         0.69  / 0.992
  all convs int8, session.x64quantprecision=1             0.92  / 0.992
  + reduce_range (7-bit weights), default session         0.86  / -
  first 8 convs kept float, x64quantprecision=1           0.988 / -
  first 8 convs kept float, reduce_range, default         0.972 / -
  first 12 convs kept float, x64quantprecision=1          0.992 / -

AVX2 without VNNI multiplies u8 x s8 pairs into saturating int16 (``vpmaddubsw``);
onnxruntime's ``session.x64quantprecision=1`` selects exact kernels, but they are slower:
the bare resnet101 int8 model at batch 8 on 2 threads ran 12.06 img/s with them and 17.03
img/s without in two dn2-bench runs (onnxruntime 1.32, this machine, quiet; BENCHMARKS.md).
So each attempt first tries the default session, and only when that misses the gate retries
with the exact kernels, which are then written into the model metadata
(``dn2.ort_session_config``) for the runtime to apply. The default session is only trusted on
a CPU whose default kernels saturate (x86 with AVX2 and no VNNI): a model verified there is
verified for the worst case, while one verified on a VNNI CPU could still saturate on an older
box, so elsewhere the exact kernels are always asked for. ResNet101 passes with the default
kernels; EfficientNet-Lite does not. The remaining error of EfficientNet-Lite sits in its first
blocks (narrow linear bottlenecks whose per-tensor activation ranges differ a lot between
channels), so the quantizer keeps a growing prefix of convolutions in float until the gate
passes. A prefix, not a hand-picked set: keeping single depthwise convs in the middle in float
measured *worse* with onnxruntime's optimised kernels (0.87) than its exact QDQ semantics
promise (0.995), while a float prefix (one float->int8 boundary) runs as the QDQ semantics say.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from dn2.runtime.scoring import loo_knn_scores

from .gate import spearman  # noqa: F401  (the gate's rank correlation; used below)
from .verify import (
    FP16_MAX_ABS_REL,
    FP16_MIN_COSINE,
    INT8_MIN_COSINE,
    INT8_MIN_SPEARMAN,
    VerificationError,
    check,
    compare,
    ort_embed,
)

ORT_INT8_CONFIG = {"session.x64quantprecision": "1"}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8")
FLOAT_PREFIXES = (0, 4, 8, 12, 16, 24, 32)  # leading convs kept in float, tried in this order
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


def verify_fp16(fp32_path: str, fp16_path: str, names: Sequence[str], images: np.ndarray) -> Dict:
    ref = ort_embed(fp32_path, images)
    out = ort_embed(fp16_path, images)
    return check(compare(ref, out, names), "fp16 vs fp32", FP16_MAX_ABS_REL, FP16_MIN_COSINE)


def default_int8_kernels_saturate(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when onnxruntime's default u8 x s8 kernels on this CPU saturate (x86 with AVX2 and
    no VNNI): then a model that passes the gate with the default session passes everywhere."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return "avx2" in flags and not flags.intersection(VNNI_FLAGS)


def knn_scores(emb: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Leave-one-out kNN score of each row against the others (paper eq. 2): the runtime's."""
    return loo_knn_scores(emb, k)


def _float_only_nodes(model) -> List[str]:
    """Names of the preprocessing nodes (cast, BGR swap, normalise) before the first Conv."""
    names = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            break
        names.append(node.name)
    return names


class _Reader:
    """onnxruntime CalibrationDataReader over a uint8 image array."""

    def __init__(self, images: np.ndarray, batch: int = 4):
        self.batches = [images[i : i + batch] for i in range(0, len(images), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {"images": self.batches[self.i - 1]}

    def __len__(self):
        return len(self.batches)


def _quantize(src: str, dst: str, images: np.ndarray, exclude: List[str], cache: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    reader = type("Reader", (_Reader, CalibrationDataReader), {})(images)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" notices; our graph is already clean
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(src),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(cache),
            )
    finally:
        root.setLevel(level)


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
    pre = _float_only_nodes(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    ref_photos, ref_calib = ort_embed(fp32_path, photos), ort_embed(fp32_path, calib)
    knn_ref = knn_scores(ref_calib)
    tried = []
    configs = ([{}] if default_int8_kernels_saturate() else []) + [dict(ORT_INT8_CONFIG)]
    with tempfile.TemporaryDirectory(prefix="dn2-int8-") as tmp:
        cache = Path(tmp) / "calibration.json"  # ranges measured once, reused for each attempt
        for n_float in [k for k in FLOAT_PREFIXES if k <= len(convs) * 3 // 4] or [0]:
            _quantize(fp32_path, dst, calib, pre + convs[:n_float], cache)
            for config in configs:
                out_photos = ort_embed(dst, photos, config)
                out_calib = ort_embed(dst, calib, config)
                on_photos = compare(ref_photos, out_photos, photo_names)
                on_calib = compare(ref_calib, out_calib, calib_names)
                rho = spearman(knn_ref, knn_scores(out_calib))
                attempt = {
                    "float_convs": n_float,
                    "int8_convs": len(convs) - n_float,
                    "ort_session_config": config,
                    "photos": on_photos,
                    "calib": on_calib,
                    "knn_spearman": rho,
                }
                tried.append(attempt)
                min_cos = min(on_photos["min_cosine"], on_calib["min_cosine"])
                log(
                    f"int8 with first {n_float}/{len(convs)} convs in float, "
                    f"{'exact' if config else 'default'} kernels: min cosine {min_cos:.4f} "
                    f"(photos {on_photos['min_cosine']:.4f}, calib "
                    f"{on_calib['min_cosine']:.4f}), kNN Spearman {rho:.3f}"
                )
                if min_cos >= INT8_MIN_COSINE and rho >= INT8_MIN_SPEARMAN:
                    break
            else:
                continue
            default = (
                on_photos
                if not config
                else compare(ref_photos, ort_embed(dst, photos), photo_names)
            )
            return {
                "method": "onnxruntime quantize_static QDQ, per-channel s8 weights, "
                "u8 activations, MinMax",
                "calib_images": len(calib),
                "float_convs": n_float,
                "int8_convs": len(convs) - n_float,
                "photos": on_photos,
                "calib": on_calib,
                "knn_spearman": rho,
                "ort_session_config": dict(config),
                "default_kernels_saturate": not configs[0],
                "photos_default_session": default,
                "tolerance": {"min_cosine": INT8_MIN_COSINE, "min_knn_spearman": INT8_MIN_SPEARMAN},
                "attempts": [
                    {
                        k: v
                        for k, v in a.items()
                        if k in ("float_convs", "knn_spearman", "ort_session_config")
                    }
                    | {"min_cosine": min(a["photos"]["min_cosine"], a["calib"]["min_cosine"])}
                    for a in tried
                ],
                "passed": True,
            }
    Path(dst).unlink(missing_ok=True)
    best = max(tried, key=lambda a: min(a["photos"]["min_cosine"], a["calib"]["min_cosine"]))
    raise VerificationError(
        f"verification failed, int8 vs fp32: best attempt ({best['float_convs']} convs in "
        f"float) reached min cosine {min(best['photos']['min_cosine'], best['calib']['min_cosine']):.4f} "
        f"and kNN Spearman {best['knn_spearman']:.3f}; tolerance cosine >= {INT8_MIN_COSINE}, "
        f"Spearman >= {INT8_MIN_SPEARMAN}. Calibrate on more images like yours (--calib DIR) "
        f"or use --precision fp32. No model was written."
    )
