"""The ONNX contract between dn2-export and the runtime: the model's metadata.

A dn2 model is an ONNX graph with one input and one or more named outputs:

* input ``images``: uint8, NHWC, **BGR** (what OpenCV hands over), shape [N, S, S, 3], N dynamic.
  Cast, BGR->RGB and the per-arch normalisation happen inside the graph.
* output ``embedding``: float32 [N, D], the feature right after global average pooling; always.
* further outputs (for example ``patches`` [N, C, h, w]) as the model's ``dn2.outputs`` says.

It describes itself in ``metadata_props`` (string key -> string value). The keys are below; the
runtime reads them through onnxruntime (``session.get_modelmeta().custom_metadata_map``), so it
needs no ``onnx`` package. Both sides import this module: export writes, runtime reads; the
graph's signature is checked against it in ``dn2.runtime.contract``.

Formats: ``dn2-model-2`` lists its outputs in ``dn2.outputs`` (JSON, see ``OutputSpec``).
``dn2-model-1`` (models exported before) has the single output ``embeddings`` [N, D], read as
the ``embedding`` output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .errors import ModelError

INPUT_NAME = "images"
EMBEDDING = "embedding"  # the logical (and, from dn2-model-2 on, the graph's) output name
V1_OUTPUT_NAME = "embeddings"  # the embedding output's graph name in dn2-model-1 graphs
OUTPUT_NAME = EMBEDDING  # the exporter's name for the embedding output
PATCHES_NAME = "patches"  # optional output, float32 [N, C, h, w] (dn2-export --patches)
INPUT_FORMAT = "NHWC-BGR-uint8"
CROP_RATIO = 0.875  # paper 4.6: resize to 256, centre crop 224 -> 224 / 256

# metadata_props keys
K_FORMAT = "dn2.format"  # "dn2-model-2" (or "dn2-model-1", read for older models)
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
# int8 models: JSON of the export gate's choice (quantizer settings, kernels, cosine, kNN rank
# agreement and their margins over the tolerance, calibration images' sha256); informative
K_INT8_CHOICE = "dn2.int8_choice"
K_OUTPUTS = "dn2.outputs"  # JSON list of OutputSpec (dn2-model-2)
# dn2-model-1 only: JSON describing the ``patches`` output (dn2-model-2 keeps it in the
# output's attrs): {layers: [{name, stride, channels}], stride, channels, grid: [h, w], pool,
# upsample}
K_PATCHES = "dn2.patches"
FORMAT = "dn2-model-2"
FORMAT_V1 = "dn2-model-1"
FORMATS = (FORMAT, FORMAT_V1)
BATCH = "N"  # the dynamic batch axis in OutputSpec.shape


class ModelMetaError(ModelError):
    """A model file is not a dn2 model, or its metadata is inconsistent."""


Dim = Union[int, str]


@dataclass(frozen=True)
class OutputSpec:
    """One named graph output: logical ``name``, the graph ``tensor`` carrying it, its
    ``shape`` (``"N"`` for the batch axis, positive ints elsewhere), dtype and free-form
    ``attrs`` describing it (e.g. for patch features: layers, stride, channels)."""

    name: str
    shape: Tuple[Dim, ...]
    dtype: str = "float32"
    tensor: str = ""  # "" -> same as name
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def graph_name(self) -> str:
        return self.tensor or self.name

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.tensor and self.tensor != self.name:
            d["tensor"] = self.tensor
        if self.attrs:
            d["attrs"] = dict(self.attrs)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "model") -> OutputSpec:
        where = f"{source}: metadata {K_OUTPUTS}"
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
            raise ModelMetaError(f"{where}: expected objects with a 'name', found {d!r}")
        shape = d.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or shape[0] != BATCH
            or not all(type(x) is int and x > 0 for x in shape[1:])
        ):
            raise ModelMetaError(
                f"{where}: output {d['name']!r} expected shape "
                f"['N', positive ints...], found {shape!r}"
            )
        dtype, tensor, attrs = d.get("dtype", "float32"), d.get("tensor", ""), d.get("attrs", {})
        if dtype != "float32" or not isinstance(tensor, str) or not isinstance(attrs, dict):
            raise ModelMetaError(
                f"{where}: output {d['name']!r} expected dtype 'float32', a "
                f"string tensor and an attrs object, found {d!r}"
            )
        unknown = sorted(set(d) - {"name", "shape", "dtype", "tensor", "attrs"})
        if unknown:
            raise ModelMetaError(f"{where}: output {d['name']!r} has unknown keys {unknown}")
        return cls(name=d["name"], shape=tuple(shape), dtype=dtype, tensor=tensor, attrs=attrs)


def embedding_output(dim: int, tensor: str = "") -> OutputSpec:
    return OutputSpec(name=EMBEDDING, shape=(BATCH, int(dim)), tensor=tensor)


def outputs_to_json(outputs) -> str:
    return json.dumps([o.to_dict() for o in outputs], sort_keys=True)


def outputs_from_json(text: str, dim: int, source: str = "model") -> Tuple[OutputSpec, ...]:
    """Parse ``dn2.outputs``; it must hold ``embedding`` [N, dim] and unique names."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ModelMetaError(f"{source}: metadata {K_OUTPUTS} is not valid JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ModelMetaError(
            f"{source}: metadata {K_OUTPUTS}: expected a non-empty list of outputs, found {raw!r}"
        )
    outs = tuple(OutputSpec.from_dict(d, source) for d in raw)
    names = [o.name for o in outs]
    tensors = [o.graph_name for o in outs]
    if len(set(names)) != len(names) or len(set(tensors)) != len(tensors):
        raise ModelMetaError(
            f"{source}: metadata {K_OUTPUTS}: expected unique output names, found {names}"
        )
    emb = [o for o in outs if o.name == EMBEDDING]
    if not emb or emb[0].shape != (BATCH, dim):
        raise ModelMetaError(
            f"{source}: metadata {K_OUTPUTS}: expected an output {EMBEDDING!r} of shape "
            f"['N', {dim}] (metadata embedding dim {dim}), found "
            + (f"shape {list(emb[0].shape)}" if emb else f"outputs {names}")
        )
    return outs


@dataclass(frozen=True)
class ResizeRule:
    """Shorter side to ``resize_to`` (antialiased), then centre crop ``crop`` x ``crop``."""

    resize_to: int
    crop: int
    mode: str = "shorter_side"

    @classmethod
    def for_input_size(cls, size: int) -> ResizeRule:
        return cls(resize_to=int(round(size / CROP_RATIO)), crop=int(size))

    def to_json(self) -> str:
        return json.dumps(
            {"mode": self.mode, "resize_to": self.resize_to, "crop": self.crop}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> ResizeRule:
        try:
            d = json.loads(text)
            rule = cls(resize_to=int(d["resize_to"]), crop=int(d["crop"]), mode=str(d["mode"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelMetaError(
                f"resize rule {text!r} is not valid JSON with mode/resize_to/crop: {exc}"
            ) from None
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
    # The graph's named outputs and the metadata format. None given -> the single embedding
    # output: "embedding" under dn2-model-2 (the default), "embeddings" under dn2-model-1
    # (format=FORMAT_V1: what graphs exported before named outputs carry).
    outputs: Tuple[OutputSpec, ...] = ()
    format: str = FORMAT

    def __post_init__(self):
        fmt = self.format
        if fmt not in FORMATS:
            raise ModelMetaError(f"model format: expected one of {FORMATS}, found {fmt!r}")
        v1_out = (embedding_output(self.dim, V1_OUTPUT_NAME),)
        if not self.outputs:
            object.__setattr__(
                self, "outputs", v1_out if fmt == FORMAT_V1 else (embedding_output(self.dim),)
            )
        elif fmt == FORMAT_V1 and (
            self.outputs[0] != v1_out[0] or any(o.name != PATCHES_NAME for o in self.outputs[1:])
        ):
            raise ModelMetaError(
                f"{FORMAT_V1} has the output {V1_OUTPUT_NAME!r} (and optionally "
                f"{PATCHES_NAME!r}); other named outputs need {FORMAT}"
            )
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def output(self, name: str) -> Optional[OutputSpec]:
        """The output called ``name`` (logical name), or None."""
        return next((o for o in self.outputs if o.name == name), None)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def to_props(self) -> Dict[str, str]:
        props = {
            K_FORMAT: self.format,
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
        if self.format != FORMAT_V1:
            props[K_OUTPUTS] = outputs_to_json(self.outputs)
        props.update(self.extra)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMeta:
        fmt = props.get(K_FORMAT)
        if fmt not in FORMATS:
            raise ModelMetaError(
                f"{source} is not a dn2 model: metadata {K_FORMAT!r} expected {FORMAT!r} (or "
                f"{FORMAT_V1!r} from older exports), found {fmt!r} (export it with dn2-export)"
            )
        missing = [
            k for k in (K_ARCH, K_INPUT_SIZE, K_RESIZE, K_DIM, K_PRECISION) if k not in props
        ]
        if missing:
            raise ModelMetaError(f"{source}: dn2 metadata lacks {missing}")
        if props.get(K_INPUT_FORMAT, INPUT_FORMAT) != INPUT_FORMAT:
            raise ModelMetaError(
                f"{source}: input format expected {INPUT_FORMAT!r}, "
                f"found {props.get(K_INPUT_FORMAT)!r}"
            )
        try:
            size, dim = int(props[K_INPUT_SIZE]), int(props[K_DIM])
            opset = int(props.get(K_OPSET, "0"))
        except ValueError as exc:
            raise ModelMetaError(
                f"{source}: non-integer size/dim/opset in metadata: {exc}"
            ) from None
        resize = ResizeRule.from_json(props[K_RESIZE])
        if resize.crop != size:
            raise ModelMetaError(f"{source}: resize crop {resize.crop} != input size {size}")
        if fmt == FORMAT_V1:
            outputs: Tuple[OutputSpec, ...] = (embedding_output(dim, V1_OUTPUT_NAME),)
            if props.get(K_PATCHES):
                outputs += (_v1_patches(props[K_PATCHES], source),)
        elif K_OUTPUTS not in props:
            raise ModelMetaError(
                f"{source}: dn2 metadata lacks [{K_OUTPUTS!r}] ({fmt} lists its outputs)"
            )
        else:
            outputs = outputs_from_json(props[K_OUTPUTS], dim, source)
        known = {
            K_FORMAT,
            K_ARCH,
            K_WEIGHTS,
            K_WEIGHTS_SHA256,
            K_INPUT_SIZE,
            K_INPUT_FORMAT,
            K_RESIZE,
            K_DIM,
            K_OPSET,
            K_PRECISION,
            K_VERSION,
            K_OUTPUTS,
        }
        return cls(
            arch=props[K_ARCH],
            weights=props.get(K_WEIGHTS, ""),
            weights_sha256=props.get(K_WEIGHTS_SHA256, ""),
            input_size=size,
            resize=resize,
            dim=dim,
            opset=opset,
            precision=props[K_PRECISION],
            version=props.get(K_VERSION, ""),
            extra={k: v for k, v in props.items() if k not in known},
            outputs=outputs,
            format=fmt,
        )


ModelSpec = ModelMeta  # what a user's model is, read from its ONNX metadata


def parse_patch_attrs(d: Any, source: str = "model") -> Dict[str, Any]:
    """Check and normalise the ``patches`` output's description (layers, stride, channels,
    grid, pool, upsample)."""
    try:
        spec = {
            "layers": [
                dict(name=str(x["name"]), stride=int(x["stride"]), channels=int(x["channels"]))
                for x in d["layers"]
            ],
            "stride": int(d["stride"]),
            "channels": int(d["channels"]),
            "grid": [int(d["grid"][0]), int(d["grid"][1])],
            "pool": int(d.get("pool", 3)),
            "upsample": str(d.get("upsample", "bilinear")),
        }
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ModelMetaError(
            f"{source}: metadata {K_PATCHES} expected JSON with layers, stride, "
            f"channels and grid, found {d!r} ({exc})"
        ) from None
    if sum(x["channels"] for x in spec["layers"]) != spec["channels"] or min(spec["grid"]) < 1:
        raise ModelMetaError(
            f"{source}: metadata {K_PATCHES}: layer channels must add up to "
            f"{spec['channels']} and the grid be positive, found {d!r}"
        )
    return spec


def patches_output(attrs: Mapping[str, Any], source: str = "model") -> OutputSpec:
    """The ``patches`` output [N, C, h, w] described by ``attrs`` (see parse_patch_attrs)."""
    spec = parse_patch_attrs(attrs, source)
    return OutputSpec(name=PATCHES_NAME, shape=(BATCH, spec["channels"], *spec["grid"]), attrs=spec)


def _v1_patches(text: str, source: str) -> OutputSpec:
    try:
        d = json.loads(text)
    except ValueError:
        d = text
    return patches_output(d, source)


def patch_spec(meta: ModelMeta, source: str = "model") -> Optional[Dict]:
    """The ``patches`` output's description, or None for a model exported without it."""
    out = meta.output(PATCHES_NAME)
    return None if out is None else parse_patch_attrs(out.attrs, source)


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
        raise ModelMetaError(
            f"{source}: expected dn2 metadata as UTF-8 text, found bytes that "
            f"are not ({exc.reason} at byte {exc.start}): a damaged model "
            f"file"
        ) from None
