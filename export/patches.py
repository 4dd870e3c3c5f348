"""The optional second graph output ``patches [N, C, h, w]``: locally aggregated mid-level features.

Two taps of the trunk — ResNets: ``layer2`` (stride 8) and ``layer3`` (stride 16);
EfficientNet-Lite: the last block at stride 8 and the last block at stride 16 — each averaged
over its 3x3 neighbourhood (stride 1, zero padding counted, PatchCore's local aggregation), the
stride-16 map bilinearly upsampled to the stride-8 grid, and the two concatenated along the
channels. All of it is inside the graph (AveragePool, Resize, Concat: operators TensorRT runs
natively), so every runtime gets the same map from the same bytes. The pooled embedding output
is computed from the same trunk pass and stays the first output.
"""

from __future__ import annotations

import json
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .archs import ArchSpec
from .graph import EmbeddingGraph

POOL = 3  # local aggregation window (patches of 3x3 feature cells)


def _lite_taps(model: nn.Module) -> List[Tuple[int, int, int]]:
    """(block index, stride, channels) of the last block at stride 8 and at stride 16."""
    stride, last = 2, {}  # the stem has stride 2
    for i, block in enumerate(model._blocks):
        stride *= int(block._depthwise_conv.stride[0])
        last[stride] = (i, stride, int(block._bn2.num_features))
    return [last[8], last[16]]


class TappedTrunk(nn.Module):
    """Normalised RGB -> (final feature map, [stride-8 map, stride-16 map])."""

    def __init__(self, spec: ArchSpec, model: nn.Module):
        super().__init__()
        self.is_resnet = spec.is_resnet
        self.model = model
        if spec.is_resnet:
            c8 = _out_channels(model.layer2)
            c16 = _out_channels(model.layer3)
            self.layers = [
                {"name": "layer2", "stride": 8, "channels": c8},
                {"name": "layer3", "stride": 16, "channels": c16},
            ]
        else:
            taps = _lite_taps(model)
            self.tap_ids = [t[0] for t in taps]
            self.layers = [{"name": f"blocks.{i}", "stride": s, "channels": c} for i, s, c in taps]

    def forward(self, x: torch.Tensor):
        m = self.model
        if self.is_resnet:
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            x = m.layer1(x)
            f8 = m.layer2(x)
            f16 = m.layer3(f8)
            return m.layer4(f16), [f8, f16]
        x = F.relu6(m._bn0(m._conv_stem(x)))
        taps = []
        for i, block in enumerate(m._blocks):
            x = block(x)
            if i in self.tap_ids:
                taps.append(x)
        return F.relu6(m._bn1(m._conv_head(x))), taps


def _out_channels(layer: nn.Module) -> int:
    last = list(layer.children())[-1]
    bn = getattr(last, "bn3", None) or last.bn2
    return int(bn.num_features)


class PatchGraph(EmbeddingGraph):
    """uint8 [N,S,S,3] BGR -> (float32 [N,D] embedding, float32 [N,C,S/8,S/8] patches)."""

    def __init__(self, spec: ArchSpec, model: nn.Module):
        super().__init__(spec, model)
        self.tapped = TappedTrunk(spec, model)
        self.pool = nn.AvgPool2d(POOL, stride=1, padding=POOL // 2)

    def forward(self, images: torch.Tensor):
        final, (f8, f16) = self.tapped(self.preprocess(images))
        p8, p16 = self.pool(f8), self.pool(f16)
        p16 = F.interpolate(
            p16, size=(int(p8.shape[-2]), int(p8.shape[-1])), mode="bilinear", align_corners=False
        )
        return final.mean(dim=(2, 3)), torch.cat([p8, p16], dim=1)

    def describe(self, input_size: int) -> Dict[str, object]:
        """The metadata entry (``dn2.patches``) of this output at ``input_size``."""
        with torch.no_grad():
            _, p = self(torch.zeros(1, input_size, input_size, 3, dtype=torch.uint8))
        return {
            "layers": self.tapped.layers,
            "stride": 8,
            "channels": int(p.shape[1]),
            "grid": [int(p.shape[2]), int(p.shape[3])],
            "pool": POOL,
            "upsample": "bilinear",
        }


def build_patch_graph(spec: ArchSpec, model: nn.Module) -> PatchGraph:
    return PatchGraph(spec, model).eval()


def describe_json(graph: PatchGraph, input_size: int) -> str:
    return json.dumps(graph.describe(input_size), sort_keys=True)
