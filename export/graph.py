"""The exported graph: uint8 NHWC BGR images -> named outputs, ``embedding`` float32 [N, D]
(pooled) always (and ``patches`` with dn2.export.patches); the outputs and their description
are the model's ``dn2.outputs`` metadata.

Cast, BGR->RGB, per-arch normalisation and global average pooling live inside the graph, so
every runtime (onnxruntime, TensorRT, DeepStream) gets the same numbers from the same bytes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from dn2.runtime.modelmeta import (
    EMBEDDING,
    FORMAT,
    INPUT_NAME,
    K_PATCHES,
    PATCHES_NAME,
    ModelMeta,
    embedding_output,
)

from . import onnx_passes
from .archs import DEFAULT_OPSET, ArchSpec


class Trunk(nn.Module):
    """Normalised RGB NCHW float -> feature map before pooling, for either family."""

    def __init__(self, spec: ArchSpec, model: nn.Module):
        super().__init__()
        if spec.is_resnet:
            m = model
            self.body = nn.Sequential(
                m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4
            )
        else:
            self.body = _LiteFeatures(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _LiteFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class EmbeddingGraph(nn.Module):
    """uint8 [N,S,S,3] BGR -> float32 [N,D]."""

    def __init__(self, spec: ArchSpec, model: nn.Module):
        super().__init__()
        self.trunk = Trunk(spec, model)
        # BGR -> RGB and (x - mean) / std on the channel-last pixels as one Gemm, pixels [P, 3]
        # @ mix + shift: mix holds one 1 / std per column, so the products are those of
        # x * (1 / std) and the sums add exact zeros. onnxruntime runs the int8 graph
        # channel-last, where a Slice, a Mul and an Add broadcast over the 3 channels cost
        # several times the Gemm (BENCHMARKS.md "int8 on a CPU without VNNI", the profile).
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        std = torch.tensor(spec.std, dtype=torch.float32)
        mix = torch.zeros(3, 3, dtype=torch.float32)
        for rgb in range(3):
            mix[2 - rgb, rgb] = 1.0 / std[rgb]  # input channel 2 - c (BGR) -> output c (RGB)
        self.register_buffer("mix", mix)
        self.register_buffer("shift", -mean / std)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC BGR -> normalised float NCHW RGB (what the trunk was trained on)."""
        x = torch.addmm(self.shift, images.to(torch.float32).reshape(-1, 3), self.mix)
        return x.reshape_as(images).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.preprocess(images)).mean(dim=(2, 3))


def build_graph(spec: ArchSpec, model: nn.Module) -> EmbeddingGraph:
    return EmbeddingGraph(spec, model).eval()


def named_meta(meta: ModelMeta) -> ModelMeta:
    """``meta`` in the current format: a dn2-model-1 description's outputs renamed
    (``embeddings`` -> ``embedding``; ``patches`` keeps its description, in ``dn2.outputs``)."""
    if meta.format == FORMAT:
        return meta
    extra = {k: v for k, v in meta.extra.items() if k != K_PATCHES}
    return replace(
        meta,
        format=FORMAT,
        extra=extra,
        outputs=(embedding_output(meta.dim),) + tuple(meta.outputs[1:]),
    )


def export_onnx(
    graph: EmbeddingGraph,
    path: Path,
    input_size: int,
    opset: int = DEFAULT_OPSET,
    meta: Optional[ModelMeta] = None,
) -> Dict[str, int]:
    """Write the ONNX graph (single file, dynamic batch), cleaned, with ``meta`` as metadata_props.

    The graph's outputs are named after ``meta.outputs`` (in that order: the module's forward
    returns one tensor per output); without ``meta``: ``embedding`` (and ``patches`` for a
    patch graph).

    Uses the TorchScript-based exporter (``dynamo=False``). Measured with torch 2.14.1 on this
    2-core machine, both exporters run offline and give the same numbers (max rel. error ~1e-6),
    but the dynamo exporter took 10-40 s per trunk at 64x64 against 2-10 s; its only advantage, a
    graph without Pad/Identity clutter, is had here by ``onnx_passes.clean``.
    """
    import onnx

    if meta is not None:
        meta = named_meta(meta)
        outputs = [o.graph_name for o in meta.outputs]
    else:
        outputs = [EMBEDDING, PATCHES_NAME] if _has_patches(graph) else [EMBEDDING]
    dummy = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={INPUT_NAME: {0: "N"}, **{name: {0: "N"} for name in outputs}},
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    counts = onnx_passes.clean(model, (1, input_size, input_size, 3))
    if len(outputs) > 1:  # torch leaves the concatenated channel axis symbolic: pin it
        with torch.no_grad():
            _, p = graph(torch.zeros(1, input_size, input_size, 3, dtype=torch.uint8))
        dims = model.graph.output[1].type.tensor_type.shape.dim
        for d, v in zip(list(dims)[1:], p.shape[1:]):
            d.ClearField("dim_param")
            d.dim_value = int(v)
    if meta is not None:
        set_metadata(model, meta)
    onnx.save(model, str(path))
    return counts


def _has_patches(graph: nn.Module) -> bool:
    return hasattr(graph, "tapped")  # dn2.export.patches.PatchGraph


def set_metadata(model, meta: ModelMeta) -> None:
    """Replace an onnx ModelProto's metadata_props with ``meta`` (in the current format)."""
    meta = named_meta(meta)
    del model.metadata_props[:]
    for key, value in meta.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "dn2-export"
    model.producer_version = meta.version


def write_metadata(path: Path, meta: ModelMeta) -> None:
    """Replace the metadata_props of the model file at ``path`` (atomically), dropping nodes and
    initializers a converter left unused (e.g. the quantizer's removed Clip bounds)."""
    import onnx

    model = onnx.load(str(path))
    onnx_passes.remove_dead_nodes(model)
    set_metadata(model, meta)
    tmp = Path(str(path) + ".meta-tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
