"""The ONNX contract between dn2-export and the runtime.

A dn2 model is an ONNX graph with one input and one output:

* input  ``images``:     uint8, NHWC, **BGR** (what OpenCV hands over), shape [N, S, S, 3], N dynamic.
  Cast, BGR->RGB and the per-arch normalisation happen inside the graph.
* output ``embeddings``: float32 [N, D], the feature right after global average pooling.

It describes itself in ``metadata_props`` (string key -> string value). The keys are below; the
runtime reads them through onnxruntime (``session.get_modelmeta().custom_metadata_map``), so it
needs no ``onnx`` package. Both sides import this module: export writes, runtime reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from .errors import ModelError

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
PATCHES_NAME = "patches"  # optional second output, float32 [N, C, h, w] (dn2-export --patches)
INPUT_FORMAT = "NHWC-BGR-uint8"
CROP_RATIO = 0.875  # paper 4.6: resize to 256, centre crop 224 -> 224 / 256

# metadata_props keys
K_FORMAT = "dn2.format"  # always "dn2-model-1"
K_ARCH = "dn2.arch"
K_WEIGHTS = "dn2.weights"  # tag: "imagenet:IMAGENET1K_V1", "none", "file:<name>", ...
K_WEIGHTS_SHA256 = "dn2.weights_sha256"
K_INPUT_SIZE = "dn2.input_size"
K_INPUT_FORMAT = "dn2.input_format"
K_RESIZE = "dn2.resize"  # JSON, see ResizeRule
K_DIM = "dn2.embedding_dim"
K_OPSET = "dn2.opset"
K_PRECISION = "dn2.precision"  # fp32 | fp16 | int8
K_VERSION = "dn2.version"
K_ORT_CONFIG = "dn2.ort_session_config"  # optional JSON {key: value} for onnxruntime SessionOptions
# optional JSON describing the ``patches`` output: {layers: [{name, stride, channels}], stride,
# channels, grid: [h, w], pool, upsample}
K_PATCHES = "dn2.patches"
FORMAT = "dn2-model-1"


class ModelMetaError(ModelError):
    """A model file is not a dn2 model, or its metadata is inconsistent."""


@dataclass(frozen=True)
class ResizeRule:
    """Shorter side to ``resize_to`` (antialiased), then centre crop ``crop`` x ``crop``."""

    resize_to: int
    crop: int
    mode: str = "shorter_side"

    @classmethod
    def for_input_size(cls, size: int) -> "ResizeRule":
        return cls(resize_to=int(round(size / CROP_RATIO)), crop=int(size))

    def to_json(self) -> str:
        return json.dumps({"mode": self.mode, "resize_to": self.resize_to, "crop": self.crop},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ResizeRule":
        try:
            d = json.loads(text)
            rule = cls(resize_to=int(d["resize_to"]), crop=int(d["crop"]), mode=str(d["mode"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelMetaError(f"resize rule {text!r} is not valid JSON with mode/resize_to/crop: {exc}")
        if rule.mode != "shorter_side":
            raise ModelMetaError(f"resize mode {rule.mode!r} unknown; expected 'shorter_side'")
        if rule.crop <= 0 or rule.resize_to < rule.crop:
            raise ModelMetaError(f"resize rule needs 0 < crop <= resize_to, found {rule}")
        return rule


@dataclass(frozen=True)
class ModelMeta:
    arch: str
    weights: str
    weights_sha256: str
    input_size: int
    resize: ResizeRule
    dim: int
    opset: int
    precision: str
    version: str
    extra: Dict[str, str] = field(default_factory=dict)

    def to_props(self) -> Dict[str, str]:
        props = {
            K_FORMAT: FORMAT,
            K_ARCH: self.arch,
            K_WEIGHTS: self.weights,
            K_WEIGHTS_SHA256: self.weights_sha256,
            K_INPUT_SIZE: str(self.input_size),
            K_INPUT_FORMAT: INPUT_FORMAT,
            K_RESIZE: self.resize.to_json(),
            K_DIM: str(self.dim),
            K_OPSET: str(self.opset),
            K_PRECISION: self.precision,
            K_VERSION: self.version,
        }
        props.update(self.extra)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMeta":
        if props.get(K_FORMAT) != FORMAT:
            raise ModelMetaError(
                f"{source} is not a dn2 model: metadata {K_FORMAT!r} expected {FORMAT!r}, "
                f"found {props.get(K_FORMAT)!r} (export it with dn2-export)")
        missing = [k for k in (K_ARCH, K_INPUT_SIZE, K_RESIZE, K_DIM, K_PRECISION) if k not in props]
        if missing:
            raise ModelMetaError(f"{source}: dn2 metadata lacks {missing}")
        if props.get(K_INPUT_FORMAT, INPUT_FORMAT) != INPUT_FORMAT:
            raise ModelMetaError(f"{source}: input format expected {INPUT_FORMAT!r}, "
                                 f"found {props.get(K_INPUT_FORMAT)!r}")
        try:
            size, dim = int(props[K_INPUT_SIZE]), int(props[K_DIM])
            opset = int(props.get(K_OPSET, "0"))
        except ValueError as exc:
            raise ModelMetaError(f"{source}: non-integer size/dim/opset in metadata: {exc}")
        resize = ResizeRule.from_json(props[K_RESIZE])
        if resize.crop != size:
            raise ModelMetaError(f"{source}: resize crop {resize.crop} != input size {size}")
        known = {K_FORMAT, K_ARCH, K_WEIGHTS, K_WEIGHTS_SHA256, K_INPUT_SIZE, K_INPUT_FORMAT,
                 K_RESIZE, K_DIM, K_OPSET, K_PRECISION, K_VERSION}
        return cls(arch=props[K_ARCH], weights=props.get(K_WEIGHTS, ""),
                   weights_sha256=props.get(K_WEIGHTS_SHA256, ""), input_size=size,
                   resize=resize, dim=dim, opset=opset, precision=props[K_PRECISION],
                   version=props.get(K_VERSION, ""),
                   extra={k: v for k, v in props.items() if k not in known})


def patch_spec(meta: ModelMeta, source: str = "model") -> Optional[Dict]:
    """The ``patches`` output's description, or None for a model exported without it."""
    text = meta.extra.get(K_PATCHES)
    if not text:
        return None
    try:
        d = json.loads(text)
        spec = {"layers": [dict(name=str(x["name"]), stride=int(x["stride"]),
                                channels=int(x["channels"])) for x in d["layers"]],
                "stride": int(d["stride"]), "channels": int(d["channels"]),
                "grid": [int(d["grid"][0]), int(d["grid"][1])], "pool": int(d.get("pool", 3)),
                "upsample": str(d.get("upsample", "bilinear"))}
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelMetaError(f"{source}: metadata {K_PATCHES} expected JSON with layers, stride, "
                             f"channels and grid, found {text!r} ({exc})") from None
    if sum(x["channels"] for x in spec["layers"]) != spec["channels"] or min(spec["grid"]) < 1:
        raise ModelMetaError(f"{source}: metadata {K_PATCHES}: layer channels must add up to "
                             f"{spec['channels']} and the grid be positive, found {text!r}")
    return spec


def read_model_meta(path: str) -> ModelMeta:
    """Read a dn2 model's metadata with onnxruntime (no onnx package needed)."""
    import onnxruntime as ort

    from .paths import regular_file

    regular_file(path, "a dn2 ONNX model file (from dn2-export)", ModelMetaError)  # no FIFO
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types; the message is what matters
        raise ModelMetaError(f"cannot load ONNX model {path}: {exc}") from exc
    return ModelMeta.from_props(session_props(sess, str(path)), source=str(path))


def session_props(sess, source: str) -> Dict[str, str]:
    """The model's metadata_props from an onnxruntime session (a damaged model's bytes that
    are not UTF-8 are a ModelMetaError, not a UnicodeDecodeError)."""
    try:
        return dict(sess.get_modelmeta().custom_metadata_map)
    except UnicodeDecodeError as exc:
        raise ModelMetaError(f"{source}: expected dn2 metadata as UTF-8 text, found bytes that "
                             f"are not ({exc.reason} at byte {exc.start}): a damaged model "
                             f"file") from None
