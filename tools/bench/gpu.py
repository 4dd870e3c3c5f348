"""GPU throughput of a dn2 model: fp32 / fp16 / int8 x onnxruntime CUDA EP / TensorRT EP / native
TensorRT engine x batch sizes. Only runs on a machine with an NVIDIA GPU.

    python -m dn2.tools.bench.gpu --arch resnet101 --weights none --calib DIR --json gpu.json
    python -m dn2.tools.bench.gpu --onnx fp32=model.onnx --onnx fp16=model-fp16.onnx ...

Every number is end to end from host uint8 pixels [N, S, S, 3] to host float32 embeddings
(the host->device and device->host copies included), median of ``--repeats`` timed runs of
``--iters`` batches after ``--warmup`` batches. The CUDA EP runs the ONNX file of each precision
(fp32 always; fp16 / int8 only when such a file is given with --onnx); the TensorRT EP and the
native engine build their fp16 / int8 engines from the fp32 ONNX (int8: calibrated on --calib).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from dn2.runtime.errors import Dn2Error

BACKENDS = ("ort-cuda", "ort-tensorrt", "trt-native")
PRECISIONS = ("fp32", "fp16", "int8")


def time_batches(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, warmup: int, iters: int, repeats: int
) -> Dict[str, float]:
    for _ in range(warmup):
        run(x)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            run(x)
        rates.append(len(x) * iters / (time.perf_counter() - t0))
    return {"img_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)}


def _ort_runner(onnx: Path, providers: list, want: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    from dn2.runtime.gpu_io import BoundRunner

    sess = ort.InferenceSession(str(onnx), providers=providers)
    if sess.get_providers()[0] != want:
        raise Dn2Error(
            f"{want} did not load (session providers {sess.get_providers()}): "
            f"see onnxruntime's log above"
        )
    return BoundRunner(sess).run


def _export(arch: str, weights: str, size: int, work: Path, log=print) -> Dict[str, Path]:
    """fp32 (and, for the CUDA EP rows, fp16) dn2 ONNX files of ``arch``; reused when present."""
    from dn2.export.pipeline import export_model

    out = {}
    for prec in ("fp32", "fp16"):
        path = work / f"{arch}-{weights}-{size}-{prec}.onnx"
        try:
            if not path.is_file():
                export_model(arch, weights, str(path), input_size=size, precision=prec)
            out[prec] = path
        except Dn2Error as exc:
            if prec == "fp32":
                raise
            log(f"[bench] no {prec} ONNX export: {exc}")
    return out


def run_bench(
    onnx: Dict[str, Path],
    batches: List[int],
    precisions: List[str],
    backends: List[str],
    calib: Optional[str],
    work: Path,
    warmup: int,
    iters: int,
    repeats: int,
    log=print,
) -> dict:
    import onnxruntime as ort

    from dn2.export.tensorrt import build_engine
    from dn2.runtime.cuda_rt import CudaRT
    from dn2.runtime.gpu_io import CUDA_EP, TRT_EP, cuda_ep_options, tensorrt_ep_options
    from dn2.runtime.modelmeta import read_model_meta
    from dn2.runtime.trt_engine import TrtEngine, import_tensorrt

    device = CudaRT().device_label(0)
    meta = read_model_meta(str(onnx["fp32"]))
    s = meta.input_size
    rng = np.random.default_rng(0)  # pixel values do not change the work a CNN does
    data = {b: rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8) for b in batches}
    rows, engines = [], {}
    try:
        trt_version = import_tensorrt("benchmarking").__version__
    except Dn2Error as exc:
        trt_version = None
        log(f"[bench] TensorRT unavailable ({exc}); native rows skipped")
    for prec in precisions:
        if "trt-native" in backends and trt_version and (prec != "int8" or calib):
            try:
                engines[prec] = build_engine(
                    onnx["fp32"],
                    prec,
                    calib=calib,
                    log=log,
                    cache_dir=work / "engines",
                    max_batch=max(batches),
                )
            except Dn2Error as exc:
                log(f"[bench] native {prec} engine: {exc}")
    for backend in backends:
        for prec in precisions:
            why, runner_for = None, None
            if backend == "ort-cuda":
                if prec not in onnx:
                    why = f"no {prec} ONNX file given (--onnx {prec}=PATH)"
                else:
                    runner_for = lambda b, p=prec: _ort_runner(  # noqa: E731
                        onnx[p], [(CUDA_EP, cuda_ep_options()), "CPUExecutionProvider"], CUDA_EP
                    )
            elif backend == "ort-tensorrt":
                cache = work / "ort-trt" / prec
                table = None
                if prec == "int8":
                    side = engines.get("int8") and json.loads(
                        Path(str(engines["int8"]) + ".json").read_text()
                    )
                    calib_file = side and work / "engines" / f"{side['cache_key'][:16]}.calib"
                    if not calib_file or not calib_file.is_file():
                        why = "int8 needs the native int8 build's calibration table (--calib DIR)"
                    else:
                        cache.mkdir(parents=True, exist_ok=True)
                        table = str(cache / "dn2_int8.calib")
                        shutil.copyfile(calib_file, table)
                if why is None:
                    cache.mkdir(parents=True, exist_ok=True)
                    opts = tensorrt_ep_options(
                        str(cache),
                        s,
                        fp16=prec != "fp32",
                        int8_table=table,
                        max_batch=max(batches),
                        opt_batch=min(8, max(batches)),
                    )
                    runner_for = lambda b, o=opts: _ort_runner(  # noqa: E731
                        onnx["fp32"],
                        [(TRT_EP, o), (CUDA_EP, cuda_ep_options()), "CPUExecutionProvider"],
                        TRT_EP,
                    )
            else:
                if prec not in engines:
                    why = "no engine (TensorRT missing, build failed, or int8 without --calib)"
                else:
                    runner_for = lambda b, p=prec: TrtEngine(engines[p], batch_size=b).embed_batch  # noqa: E731
            for b in batches:
                row = {"backend": backend, "precision": prec, "batch": b}
                if why is None:
                    try:
                        log(f"[bench] {backend} {prec} batch {b} ...")
                        row.update(time_batches(runner_for(b), data[b], warmup, iters, repeats))
                    except Dn2Error as exc:
                        row["skipped"] = str(exc)
                else:
                    row["skipped"] = why
                rows.append(row)
    return {
        "device": device,
        "tensorrt": trt_version,
        "onnxruntime": ort.__version__,
        "model": {"arch": meta.arch, "weights": meta.weights, "input_size": s},
        "method": f"end to end host uint8 -> host float32; {warmup} warm-up batches, median "
        f"of {repeats} runs x {iters} batches",
        "rows": rows,
    }


def table(report: dict) -> str:
    m = report["model"]
    lines = [
        f"{m['arch']} ({m['weights']} weights, {m['input_size']} px) on {report['device']}; "
        f"TensorRT {report['tensorrt']}, onnxruntime {report['onnxruntime']}",
        f"img/s, {report['method']}",
        "",
        "| backend | precision | "
        + " | ".join(f"batch {b}" for b in sorted({r["batch"] for r in report["rows"]}))
        + " |",
    ]
    batches = sorted({r["batch"] for r in report["rows"]})
    lines.append("|---|---|" + "---:|" * len(batches))
    for backend in BACKENDS:
        for prec in PRECISIONS:
            cells = {
                r["batch"]: r
                for r in report["rows"]
                if r["backend"] == backend and r["precision"] == prec
            }
            if not cells:
                continue
            vals = [
                f"{cells[b]['img_per_s']:.0f}" if "img_per_s" in cells.get(b, {}) else "n/a"
                for b in batches
            ]
            lines.append(f"| {backend} | {prec} | " + " | ".join(vals) + " |")
    notes = {
        f"{r['backend']} {r['precision']}: {r['skipped']}" for r in report["rows"] if "skipped" in r
    }
    return "\n".join(lines + [""] + [f"n/a {n}" for n in sorted(notes)])


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.gpu", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--onnx",
        action="append",
        default=[],
        metavar="PREC=PATH",
        help="dn2 ONNX file per precision (fp32 required unless --arch exports it)",
    )
    p.add_argument(
        "--arch", default="resnet101", help="export this arch when no fp32 --onnx is given"
    )
    p.add_argument(
        "--weights", default="none", help="weights for the export (default none: random)"
    )
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--calib", metavar="DIR", help="calibration images for int8 (required for int8)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", help="engines and exports are kept (and reused) here")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    a = p.parse_args(argv)
    try:
        onnx = {}
        for item in a.onnx:
            prec, _, path = item.partition("=")
            if prec not in PRECISIONS or not path:
                raise Dn2Error(
                    f"--onnx: expected PREC=PATH with PREC in {PRECISIONS}, found {item!r}"
                )
            onnx[prec] = Path(path)
        work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="dn2-bench-gpu-"))
        work.mkdir(parents=True, exist_ok=True)
        if "fp32" not in onnx:
            onnx = {**_export(a.arch, a.weights, a.input_size, work), **onnx}
        report = run_bench(
            onnx, a.batch, a.precision, a.backend, a.calib, work, a.warmup, a.iters, a.repeats
        )
    except Dn2Error as exc:
        print(f"bench.gpu: {exc}", file=sys.stderr)
        return 1
    print(table(report))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
