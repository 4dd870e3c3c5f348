"""What one int8 quantization is made of: the onnxruntime quantizer's settings, named.

``Int8Settings`` is the one description of a quantization the exporter tries (``quantize.py``),
records (the export report and the model metadata) and the int8 study measures
(``python -m dn2.tools.studies.int8``). ``quantize_with`` turns it into the onnxruntime
``quantize_static`` call; nothing else calls the quantizer.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

FORMATS = ("qdq", "qoperator")
WEIGHT_TYPES = ("s8", "u8")
CALIBRATIONS = ("minmax", "entropy", "percentile")
CALIB_BATCH = 4  # images per calibration batch; fixed, so the ranges depend on the images only


@dataclass(frozen=True)
class Int8Settings:
    fmt: str = "qdq"  # qdq: QuantizeLinear/DequantizeLinear pairs; qoperator: QLinearConv etc.
    weights: str = "s8"  # s8 (signed) or u8 (unsigned) weights; activations are always u8
    per_channel: bool = True  # one weight scale per output channel (else per tensor)
    reduce_range: bool = False  # 7-bit weights: u8 x s8 pair sums cannot saturate int16
    symmetric_activations: bool = False  # zero point in the middle of the activation range
    calibration: str = "minmax"  # minmax | entropy | percentile (99.999 %)
    float_first: int = 0  # leading convolutions kept in float
    float_last: int = 0  # trailing convolutions kept in float

    def __post_init__(self):
        for name, value, valid in (
            ("fmt", self.fmt, FORMATS),
            ("weights", self.weights, WEIGHT_TYPES),
            ("calibration", self.calibration, CALIBRATIONS),
        ):
            if value not in valid:
                raise ValueError(f"int8 {name} {value!r} unknown; valid: {', '.join(valid)}")
        if self.float_first < 0 or self.float_last < 0:
            raise ValueError(
                f"int8 float_first/float_last must be >= 0, found "
                f"{self.float_first}/{self.float_last}"
            )

    def label(self) -> str:
        """Short, stable name: ``qdq-s8-pc-minmax`` plus what differs (``-rr``, ``-f8``...)."""
        parts = [self.fmt, f"{self.weights}", "pc" if self.per_channel else "pt"]
        if self.reduce_range:
            parts.append("rr")
        if self.symmetric_activations:
            parts.append("symact")
        parts.append(self.calibration)
        if self.float_first:
            parts.append(f"f{self.float_first}")
        if self.float_last:
            parts.append(f"l{self.float_last}")
        return "-".join(parts)

    def describe(self) -> str:
        return (
            f"{'QDQ' if self.fmt == 'qdq' else 'QOperator'}, "
            f"{'per-channel' if self.per_channel else 'per-tensor'} "
            f"{'7-bit ' if self.reduce_range else ''}{self.weights} weights, u8 "
            f"{'symmetric ' if self.symmetric_activations else ''}activations, "
            f"{self.calibration} calibration, first {self.float_first} / last "
            f"{self.float_last} convs in float"
        )

    @property
    def saturation_free(self) -> bool:
        """True when onnxruntime's default x86 kernels cannot saturate on these weights, so
        the default session computes what the QDQ semantics say on every CPU: 7-bit weights
        keep each u8 x s8 pair sum inside int16 (2 * 255 * 64 = 32640 < 32767); u8 weights go through
        the u8 x u8 kernels, which widen to int16 before multiplying."""
        return self.reduce_range or self.weights == "u8"

    def to_json(self) -> Dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, object]) -> Int8Settings:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def with_float(self, first: int, last: Optional[int] = None) -> Int8Settings:
        return replace(
            self, float_first=first, float_last=self.float_last if last is None else last
        )


def conv_names(model) -> List[str]:
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


def float_only_nodes(model) -> List[str]:
    """Names of the preprocessing nodes (cast, BGR swap, normalise) before the first Conv."""
    names = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            break
        names.append(node.name)
    return names


def excluded_nodes(model, settings: Int8Settings) -> List[str]:
    """The nodes the quantizer leaves in float for ``settings``."""
    convs = conv_names(model)
    last = convs[len(convs) - settings.float_last :] if settings.float_last else []
    return float_only_nodes(model) + convs[: settings.float_first] + last


class _Batches:
    """The calibration images in a fixed order and batch size (``CalibrationDataReader``)."""

    def __init__(self, images: np.ndarray, batch: int = CALIB_BATCH):
        self.batches = [images[i : i + batch] for i in range(0, len(images), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {"images": self.batches[self.i - 1]}

    def __len__(self):
        return len(self.batches)


def cache_name(settings: Int8Settings) -> str:
    """Calibration ranges depend only on the method (and the images): one cache per method."""
    return f"calibration-{settings.calibration}.json"


def quantize_with(
    src: str,
    dst: str,
    images: np.ndarray,
    settings: Int8Settings,
    cache_dir: Path,
    exclude: Sequence[str] = (),
) -> None:
    """Quantize ``src`` into ``dst`` with ``settings``; ranges cached in ``cache_dir``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(src), load_external_data=False)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.calibration]
    extra = {"ActivationSymmetric": bool(settings.symmetric_activations)}
    if settings.calibration == "percentile":
        extra["CalibPercentile"] = 99.999
    reader = type("Reader", (_Batches, CalibrationDataReader), {})(images)
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
                quant_format=QuantFormat.QDQ if settings.fmt == "qdq" else QuantFormat.QOperator,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8 if settings.weights == "s8" else QuantType.QUInt8,
                nodes_to_exclude=excluded_nodes(model, settings) + list(exclude),
                calibrate_method=method,
                calibration_cache_path=str(Path(cache_dir) / cache_name(settings)),
                extra_options=extra,
            )
    finally:
        root.setLevel(level)
