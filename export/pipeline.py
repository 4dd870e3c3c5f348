"""``export_model``: arch + weights -> verified, self-describing ONNX file (+ JSON report).

Stages, each timed on the log (stderr in the CLI): weights, export, verify, quantize. Every file
is written under a temporary name beside the output and renamed only after verification
passed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Optional

from dn2.runtime.bundle import sha256_file
from dn2.runtime.errors import Dn2Error
from dn2.runtime.modelmeta import (
    K_INT8_CHOICE,
    K_ORT_CONFIG,
    ModelMeta,
    ResizeRule,
    embedding_output,
    patches_output,
)
from dn2.runtime.version import __version__

from .archs import DEFAULT_OPSET, MIN_INPUT_SIZE, get_arch

PRECISIONS = ("fp32", "fp16", "int8")
MAX_INPUT_SIZE = 1024


def default_output(arch: str, input_size: int = 224, precision: str = "fp32") -> str:
    return f"{arch}-{input_size}-{precision}.onnx"


def report_path(output: Path) -> Path:
    return Path(str(output) + ".json")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_output(output: Path) -> None:
    parent = output.parent
    if output.is_dir():
        raise Dn2Error(
            f"output {output} is a folder; expected a file name such as {output / 'model.onnx'}",
            param="output",
        )
    if parent.exists() and not parent.is_dir():
        raise Dn2Error(f"cannot write {output}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise Dn2Error(f"cannot write {output}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Dn2Error(f"cannot write {output}: folder {parent} is not writable")


def _check_args(precision: str, input_size: int, opset: int) -> None:
    if precision not in PRECISIONS:
        raise Dn2Error(
            f"precision {precision!r} unknown; valid: {', '.join(PRECISIONS)}", param="precision"
        )
    if not MIN_INPUT_SIZE <= int(input_size) <= MAX_INPUT_SIZE:
        raise Dn2Error(
            f"input_size {input_size} out of range; expected "
            f"{MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} pixels",
            param="input_size",
        )
    if not 13 <= int(opset) <= 21:
        raise Dn2Error(f"opset {opset} unsupported; expected 13..21 (default 18)", param="opset")


def _calibration(calib: Optional[str], size: int, log: Callable[[str], None]):
    from .samples import folder_images, sample_photos

    if calib:
        return folder_images(calib, size)
    log(
        "warning: no --calib DIR given; calibrating int8 on scikit-image's sample photos. "
        "Calibrate on images like the ones the camera will see for the best int8 accuracy."
    )
    return sample_photos(size)


def _public(path: Path) -> None:
    """mkstemp files are 0600; give the final files the usual umask-based mode."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _atomic_json(path: Path, data: Dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    _public(Path(tmp))
    os.replace(tmp, path)


def export_model(
    arch: str,
    weights: str = "imagenet",
    output: Optional[str] = None,
    input_size: int = 224,
    precision: str = "fp32",
    calib: Optional[str] = None,
    opset: Optional[int] = None,
    offline: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
    patches: bool = False,
) -> Dict[str, object]:
    """Export, verify, optionally convert/quantize; write ``output`` and ``<output>.json``.

    ``patches``: add the second output ``patches [N, C, S/8, S/8]`` (``dn2.export.patches``),
    described in the metadata (``dn2.outputs``) and verified like the embedding.
    Returns the report dict (also written as JSON). Raises ``Dn2Error`` (nothing written) on
    bad arguments, missing/unfit weights, or a failed verification.
    """
    log = log or _stderr
    spec = get_arch(arch)
    opset = int(opset or DEFAULT_OPSET)
    size = int(input_size)
    _check_args(precision, size, opset)
    output_path = Path(output or default_output(arch, size, precision)).expanduser()
    _check_output(output_path)
    if calib and precision != "int8":
        log(f"note: --calib is used by --precision int8 only; ignored for {precision}")
    timings: Dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str, t0: float, detail: str) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"[{name}] {detail} ({timings[name]:.1f} s)")

    t = time.perf_counter()
    from .weights import load_weights

    loaded = load_weights(spec, weights, offline=offline, log=log)
    stage(
        "weights",
        t,
        f"{arch}: {loaded.tag}"
        + (f" sha256 {loaded.sha256[:12]}" if loaded.sha256 else " (random, seed 0)"),
    )

    meta = ModelMeta(
        arch=arch,
        weights=loaded.tag,
        weights_sha256=loaded.sha256,
        input_size=size,
        resize=ResizeRule.for_input_size(size),
        dim=spec.dim,
        opset=opset,
        precision="fp32",
        version=__version__,
    )
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{output_path.name}.", suffix=".fp32.tmp", dir=str(output_path.parent)
    )
    os.close(fd)
    tmp_fp32 = Path(tmp_name)
    tmp_final = Path(str(tmp_fp32)[: -len(".fp32.tmp")] + f".{precision}.tmp")
    try:
        t = time.perf_counter()
        from .graph import build_graph, export_onnx

        pinfo = None
        if patches:
            from .patches import build_patch_graph

            graph = build_patch_graph(spec, loaded.model)
            pinfo = graph.describe(size)
            meta = replace(meta, outputs=(embedding_output(spec.dim), patches_output(pinfo)))
        else:
            graph = build_graph(spec, loaded.model)
        counts = export_onnx(graph, tmp_fp32, size, opset, meta)
        extra_out = (
            f" + patches [N,{pinfo['channels']},{pinfo['grid'][0]},{pinfo['grid'][1]}]"
            if pinfo
            else ""
        )
        stage(
            "export",
            t,
            f"ONNX opset {opset}, input uint8 [N,{size},{size},3] BGR -> "
            f"float32 [N,{spec.dim}]{extra_out} ({counts['pads_folded']} pads "
            f"folded)",
        )

        t = time.perf_counter()
        from .verify import verify_fp32, verify_fp32_patches

        verified = (verify_fp32_patches if patches else verify_fp32)(graph, str(tmp_fp32), size)
        stage(
            "verify",
            t,
            f"torch vs onnxruntime on {verified['n']} images: max-abs "
            f"{verified['max_abs']:.2e} ({verified['max_abs_rel']:.1e} rel), "
            f"min cosine {verified['min_cosine']:.6f}, kNN Spearman {verified['knn_spearman']:.4f}"
            + (f"; patches min cosine {verified['patches']['min_cosine']:.6f}" if patches else ""),
        )

        quant = None
        if precision == "fp32":
            tmp_final = tmp_fp32
        else:
            t = time.perf_counter()
            from . import quantize
            from .graph import write_metadata
            from .verify import (
                FP16_MAX_ABS_REL,
                FP16_MIN_COSINE,
                INT8_MIN_COSINE,
                verification_inputs,
                verify_patches_against,
            )

            extra = {}
            if precision == "fp16":
                quantize.to_fp16(str(tmp_fp32), str(tmp_final))
                names, images = verification_inputs(size)
                quant = quantize.verify_fp16(str(tmp_fp32), str(tmp_final), names, images)
                detail = (
                    f"fp16 vs fp32 on {quant['n']} images: max-abs rel "
                    f"{quant['max_abs_rel']:.1e}, min cosine {quant['min_cosine']:.5f}, "
                    f"kNN Spearman {quant['knn_spearman']:.4f}"
                )
                if patches:
                    quant["patches"] = verify_patches_against(
                        str(tmp_fp32),
                        str(tmp_final),
                        images,
                        names,
                        "fp16 vs fp32",
                        FP16_MAX_ABS_REL,
                        FP16_MIN_COSINE,
                    )
                    detail += f"; patches {quant['patches']['min_cosine']:.5f}"
            else:
                from .samples import sample_photos

                calib_names, calib_images = _calibration(calib, size, log)
                photo_names, photos = sample_photos(size)
                quant = quantize.quantize_int8(
                    str(tmp_fp32),
                    str(tmp_final),
                    calib_images,
                    calib_names,
                    photos,
                    photo_names,
                    log=log,
                )
                if quant["ort_session_config"]:
                    extra[K_ORT_CONFIG] = json.dumps(quant["ort_session_config"], sort_keys=True)
                extra[K_INT8_CHOICE] = json.dumps(quant["choice"], sort_keys=True)
                if patches:
                    quant["patches"] = verify_patches_against(
                        str(tmp_fp32),
                        str(tmp_final),
                        photos,
                        photo_names,
                        "int8 vs fp32",
                        None,
                        INT8_MIN_COSINE,
                        quant["ort_session_config"],
                    )
                kernels = "exact" if quant["ort_session_config"] else "default"
                detail = (
                    f"int8 {quant['choice']['settings']} ({quant['int8_convs']} convs int8, "
                    f"{quant['float_convs']} float, {kernels} onnxruntime kernels) vs fp32: "
                    f"margins cosine {quant['choice']['margin']['cosine']:+.4f}, kNN Spearman "
                    f"{quant['choice']['margin']['knn_spearman']:+.3f}; min cosine photos "
                    f"{quant['photos']['min_cosine']:.4f}, calib "
                    f"{quant['calib']['min_cosine']:.4f}, kNN Spearman "
                    f"{quant['knn_spearman']:.3f}"
                )
            write_metadata(
                tmp_final, replace(meta, precision=precision, extra={**meta.extra, **extra})
            )
            stage("quantize", t, detail)

        digest = sha256_file(tmp_final)
        report = {
            "dn2_version": __version__,
            "arch": arch,
            "weights": loaded.tag,
            "weights_sha256": loaded.sha256,
            "weights_path": loaded.path,
            "input_size": size,
            "resize": json.loads(meta.resize.to_json()),
            "embedding_dim": spec.dim,
            "patches": pinfo,
            "opset": opset,
            "precision": precision,
            "output": str(output_path.resolve()),
            "output_sha256": digest,
            "output_bytes": tmp_final.stat().st_size,
            "verify": verified,
            "quantize": quant,
            "timings_s": timings,
        }
        _public(tmp_final)
        os.replace(tmp_final, output_path)
        timings["total"] = round(time.perf_counter() - t_all, 2)
        _atomic_json(report_path(output_path), report)
        log(
            f"wrote {output_path} ({report['output_bytes'] / 1e6:.1f} MB, sha256 {digest[:12]}) "
            f"and {report_path(output_path).name} in {timings['total']:.1f} s"
        )
        return report
    finally:
        for p in (tmp_fp32, tmp_final):
            if p.exists():
                p.unlink()
