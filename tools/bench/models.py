"""The models under test: the dn2 ONNX exports (fp32, int8) and the torch-eager trunk, all built
from the same weights (``dn2.export.weights.load_weights``: for ``none`` the same seeded random
init the export uses), so the three pipelines compute the same embedding function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from dn2.runtime.errors import Dn2Error


def _reusable(path: Path, arch: str, input_size: int, precision: str, weights: str) -> bool:
    """An existing model in the work dir is reused when its metadata says it is the same model."""
    from dn2.runtime.modelmeta import read_model_meta

    if not path.is_file():
        return False
    try:
        meta = read_model_meta(str(path))
    except Dn2Error:
        return False
    same_weights = meta.weights == weights or (
        weights not in ("none", "imagenet") and meta.weights.startswith("file:")
    )
    if weights == "imagenet":
        same_weights = meta.weights.startswith("imagenet")
    return (
        meta.arch == arch
        and meta.input_size == input_size
        and meta.precision == precision
        and same_weights
    )


def export_models(
    arch: str,
    weights: str,
    input_size: int,
    out_dir: Path,
    precisions: Sequence[str],
    calib_dir: str,
    log: Callable[[str], None],
) -> Dict[str, Dict[str, object]]:
    """Export (or reuse) one model per precision; int8 is calibrated on the images in
    ``calib_dir`` (the benchmark's own frames). Returns {precision: {"path", "export_s"}}."""
    import time

    from dn2.export.pipeline import export_model

    out: Dict[str, Dict[str, object]] = {}
    for prec in precisions:
        path = out_dir / f"{arch}-{input_size}-{prec}.onnx"
        if _reusable(path, arch, input_size, prec, weights):
            log(f"reusing {path}")
            out[prec] = {"path": str(path), "export_s": None}
            continue
        log(f"exporting {arch} {prec} -> {path}")
        t0 = time.perf_counter()
        export_model(
            arch,
            weights,
            str(path),
            input_size,
            prec,
            calib=str(calib_dir) if prec == "int8" and calib_dir else None,
            log=log,
        )
        out[prec] = {"path": str(path), "export_s": round(time.perf_counter() - t0, 2)}
    return out


def torch_trunk(arch: str, weights: str):
    """(embedding trunk as an eager torch module, arch spec) for the reference pipeline."""
    from dn2.export.archs import get_arch
    from dn2.export.weights import load_weights

    from .torchref import embedding_trunk

    spec = get_arch(arch)
    return embedding_trunk(load_weights(spec, weights).model), spec


def model_flops(path: str) -> Optional[Dict[str, object]]:
    from .flops import count_model_flops

    return count_model_flops(path)
