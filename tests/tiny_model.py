"""A tiny, real dn2-contract ONNX model for runtime tests (built with onnx.helper in ms).

It is a dn2-model-1 model (the single output ``embeddings``, as exported before named
outputs), so every test built on it also proves that older models still load.

uint8 [N, S, S, 3] BGR -> Cast -> NCHW -> 3x3 conv (stride 2, fixed seeded weights) -> ReLU ->
global average pool -> float32 [N, D], with dn2 metadata_props from ``ModelMeta.to_props()``.
Keyword arguments break one part of the contract at a time, so the Embedder's checks can be
tested against real onnxruntime sessions (no mocks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def tiny_meta(input_size: int = 32, dim: int = 8, precision: str = "fp32", fmt: str = ""):
    """Metadata of the tiny model; ``fmt`` "" -> dn2-model-1 (one output ``embeddings``, what
    models exported before named outputs carry), or FORMAT for the current format."""
    from dn2.runtime.modelmeta import FORMAT_V1, ModelMeta, ResizeRule
    from dn2.runtime.version import __version__

    return ModelMeta(arch="tiny-test", weights="none", weights_sha256="", input_size=input_size,
                     resize=ResizeRule.for_input_size(input_size), dim=dim, opset=17,
                     precision=precision, version=__version__, format=fmt or FORMAT_V1)


def build_tiny_model(path, input_size: int = 32, dim: int = 8, *, meta_dim: Optional[int] = None,
                     meta_size: Optional[int] = None, input_dtype: str = "uint8",
                     input_name: str = "images", output_name: str = "embeddings",
                     fixed_batch: Optional[int] = None, fail_at_run: bool = False,
                     metadata: bool = True, seed: int = 0) -> Path:
    """Write the model to ``path`` and return it.

    ``meta_dim``/``meta_size``: metadata that disagrees with the graph. ``input_dtype``
    "float32": a graph that takes floats. ``fixed_batch``: a static N. ``fail_at_run``: loads
    and passes every static check but fails inside onnxruntime at inference (a Gather with an
    out-of-range index), to exercise the warm-up. ``metadata=False``: a plain ONNX model.
    """
    from onnx import TensorProto, helper, numpy_helper

    s, d = int(input_size), int(dim)
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0 / 27 / 255, size=(d, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0.0, 0.1, size=(d,)).astype(np.float32)
    n = fixed_batch if fixed_batch else "N"
    in_type = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}[input_dtype]
    nodes = [
        helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f" if fail_at_run else output_name], axis=1),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if fail_at_run:  # index d is out of range for a [N, d] tensor: fails only when it runs
        idx = np.arange(d, dtype=np.int64)
        idx[-1] = d + 100
        inits.append(numpy_helper.from_array(idx, "idx"))
        nodes.append(helper.make_node("Gather", ["f", "idx"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes, "dn2_tiny",
        [helper.make_tensor_value_info(input_name, in_type, [n, s, s, 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [n, d])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="dn2-tests")
    return save_model(model, tiny_meta(meta_size or s, meta_dim or d) if metadata else None, path)


def save_model(model, meta, path) -> Path:
    """Stamp ``meta`` (a ModelMeta, or None for a plain ONNX model) into ``model``'s
    metadata_props, check the graph and save it to ``path``."""
    import onnx

    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    if meta is not None:
        for k, v in meta.to_props().items():
            e = model.metadata_props.add()
            e.key, e.value = k, v
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
