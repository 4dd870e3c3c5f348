"""Build a TensorRT engine from a verified dn2 ONNX model, check it, cache it.

``build_engine(onnx_path, precision, calib, workspace_gb, log, cache_dir)``:

1. checks its arguments and the model, then imports TensorRT (lazily; without it, or without an
   NVIDIA GPU, a ``Dn2Error`` says what to install and nothing is written anywhere);
2. looks up the engine cache (``~/.cache/dn2/engines``, or ``$XDG_CACHE_HOME/dn2/engines``),
   keyed by ONNX sha256 + TensorRT version + GPU name + precision (+ the batch profile, and for
   INT8 the calibration set's digest);
3. on a miss, builds with the TensorRT 10 API: ``create_network(0)`` (explicit batch is the only
   mode since TRT 10; the EXPLICIT_BATCH flag is deprecated and ignored), the ONNX parser, one
   optimization profile for the dynamic batch dim, ``set_memory_pool_limit`` for the workspace,
   FP16 / INT8 builder flags (INT8: entropy calibrator over images prepared the runtime's way,
   with FP16 fallback for layers that do not quantize), ``build_serialized_network``; progress is
   logged through ``IProgressMonitor`` (TRT >= 10) or a periodic timer;
4. runs the engine on real images and compares with the fp32 ONNX reference on onnxruntime CPU
   (``dn2.export.trt_verify``); only an engine that passes is moved into the cache (atomic rename),
   with a JSON sidecar holding the model's dn2 metadata, the key components and the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from dn2.runtime.bundle import sha256_file
from dn2.runtime.contract import embedding_tensor
from dn2.runtime.cuda_rt import CudaRT
from dn2.runtime.errors import Dn2Error, ImageError, ModelError
from dn2.runtime.modelmeta import INPUT_NAME, ModelMeta, read_model_meta
from dn2.runtime.trt_engine import TrtEngine, import_tensorrt

from .trt_calib import (
    calibration_batches,
    calibration_digest,
    load_calibration_images,
    make_calibrator,
)
from .trt_verify import (
    MIN_VERIFY_IMAGES,
    Tolerance,
    compare_embeddings,
    default_verify_images,
    describe,
)

PRECISIONS = ("fp32", "fp16", "int8")
MAX_BATCH, OPT_BATCH, CALIB_BATCH = 64, 8, 8
HEARTBEAT_S = 30.0
Log = Callable[[str], Any]


def engine_cache_key(
    onnx_sha256: str, trt_version: str, gpu_name: str, precision: str, extra: Optional[dict] = None
) -> str:
    """Hex sha256 over the components (canonical JSON: key order never matters)."""
    parts = {
        "onnx_sha256": onnx_sha256,
        "tensorrt": str(trt_version),
        "gpu": gpu_name,
        "precision": precision,
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dn2" / "engines"


def _check_args(
    onnx_path: Path, precision: str, calib: Any, workspace_gb: float, max_batch: int, opt_batch: int
) -> None:
    if precision not in PRECISIONS:
        raise Dn2Error(
            f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}",
            param="precision",
        )
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: expected a dn2 ONNX model file, found no such file")
    if precision == "int8" and calib is None:
        raise Dn2Error(
            "precision int8 needs calibration images (calib DIR): expected a folder "
            "of normal images like the ones the detector will see, found none",
            params=("calib", "precision"),
        )
    if not workspace_gb > 0:
        raise Dn2Error(f"workspace: expected a positive number of GiB, found {workspace_gb}")
    if not 1 <= opt_batch <= max_batch:
        raise Dn2Error(
            f"batch profile: expected 1 <= opt_batch <= max_batch, found "
            f"opt {opt_batch}, max {max_batch}"
        )


def _trt_logger(trt: Any, log: Log) -> Any:
    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING:
                log(f"[TensorRT] {msg}")

    return Logger()


def _progress_monitor(trt: Any, log: Log) -> Optional[Any]:
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.t0, self.last, self.depth = time.monotonic(), 0.0, 0

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            self.depth += 1
            if self.depth <= 2:
                log(
                    f"[dn2] TensorRT build {time.monotonic() - self.t0:6.1f}s: "
                    f"{'  ' * (self.depth - 1)}{phase_name} ({num_steps} steps)"
                )

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self.last >= 10.0:  # at most one line per 10 s
                self.last = now
                log(f"[dn2] TensorRT build {now - self.t0:6.1f}s: {phase_name} step {step + 1}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.depth -= 1

    return Monitor()


class _Heartbeat:
    """Logs 'still building' every ``period`` s where TensorRT has no progress monitor."""

    def __init__(self, log: Log, period: float = HEARTBEAT_S):
        self.log, self.period, self.stop = log, period, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(self.period):
            self.log(f"[dn2] TensorRT build still running ({time.monotonic() - t0:.0f}s)")

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def _build_plan(
    trt: Any,
    cuda: CudaRT,
    onnx_path: Path,
    meta: ModelMeta,
    precision: str,
    calib: Optional[np.ndarray],
    calib_cache: Path,
    workspace_gb: float,
    max_batch: int,
    opt_batch: int,
    log: Log,
) -> bytes:
    logger = _trt_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TRT 10: explicit batch always; no flag needed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ModelError(f"{onnx_path}: TensorRT's ONNX parser refused the model: {errs}")
    s = meta.input_size
    shape = tuple(network.get_input(0).shape)
    if network.num_inputs != 1 or network.get_input(0).name != INPUT_NAME or shape[1:] != (s, s, 3):
        raise ModelError(
            f"{onnx_path}: expected one input {INPUT_NAME!r} [N, {s}, {s}, 3], "
            f"found {network.get_input(0).name!r} {shape}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, s, s, 3), (opt_batch, s, s, 3), (max_batch, s, s, 3))
    config.add_optimization_profile(profile)
    calibrator = None
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        batches = calibration_batches(calib, CALIB_BATCH)
        cprof = builder.create_optimization_profile()
        b = batches[0].shape[0]
        cprof.set_shape(INPUT_NAME, (b, s, s, 3), (b, s, s, 3), (b, s, s, 3))
        config.set_calibration_profile(cprof)
        calibrator = make_calibrator(trt, cuda, batches, calib_cache, log)
        config.int8_calibrator = calibrator
    monitor = _progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    log(
        f"[dn2] building {precision} TensorRT {trt.__version__} engine for {meta.arch} "
        f"({s} px, batch 1..{max_batch}, workspace {workspace_gb:g} GiB); this takes minutes"
    )
    t0 = time.monotonic()
    try:
        if monitor is None:
            with _Heartbeat(log):
                plan = builder.build_serialized_network(network, config)
        else:
            plan = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    if plan is None:
        raise ModelError(
            f"TensorRT could not build a {precision} engine from {onnx_path} "
            f"(see the [TensorRT] messages above)"
        )
    log(f"[dn2] engine built in {time.monotonic() - t0:.0f}s ({plan.nbytes / 1e6:.1f} MB)")
    return bytes(plan)


def _verify_batch(
    meta: ModelMeta, verify: Optional[Sequence[Any]], calib_arr: Optional[np.ndarray], log: Log
) -> np.ndarray:
    """uint8 [N, S, S, 3] of real images for the verification gate."""
    if verify is None:
        verify = default_verify_images()
        if len(verify) < MIN_VERIFY_IMAGES and calib_arr is not None:
            return calib_arr[:32]
    arr = np.zeros((0,), np.uint8)
    if len(verify):
        src = verify if isinstance(verify, np.ndarray) else list(verify)
        arr, _ = load_calibration_images(
            src, meta.resize, max_images=32, log=log, what="verification"
        )
    if len(arr) < MIN_VERIFY_IMAGES:
        raise ImageError(
            f"verification: expected at least {MIN_VERIFY_IMAGES} real images "
            f"(pip install scikit-image ships some, or pass verify=[paths]), found {len(arr)}"
        )
    return arr


def verify_engine(
    plan: bytes,
    onnx_path: Path,
    meta: ModelMeta,
    batch: np.ndarray,
    precision: str,
    tolerance: Optional[Tolerance],
    device: int,
    log: Log,
) -> dict:
    """Engine vs fp32 ONNX on onnxruntime CPU; raises ModelError (with the numbers) on failure."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    emb = embedding_tensor([o.name for o in sess.get_outputs()])
    ref = np.concatenate(
        [sess.run([emb], {INPUT_NAME: batch[i : i + 8]})[0] for i in range(0, len(batch), 8)]
    )
    with TrtEngine(plan, batch_size=8, meta=meta, device=device) as eng:
        test = eng.embed_batch(batch)
    report = compare_embeddings(ref, test, precision, tolerance)
    log(f"[dn2] verification: {describe(report)} -> {'PASS' if report['passed'] else 'FAIL'}")
    if not report["passed"]:
        raise ModelError(
            f"the {precision} engine disagrees with the fp32 ONNX reference and was "
            f"not kept: {describe(report)}"
        )
    return report


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_engine(
    onnx_path: Any,
    precision: str = "fp16",
    calib: Any = None,
    workspace_gb: float = 4,
    log: Log = print,
    cache_dir: Any = None,
    *,
    max_batch: int = MAX_BATCH,
    opt_batch: int = OPT_BATCH,
    verify: Optional[Sequence[Any]] = None,
    tolerance: Optional[Tolerance] = None,
    output: Any = None,
    device: int = 0,
    rebuild: bool = False,
) -> Path:
    """Build (or fetch from the cache) a verified TensorRT engine; returns its path.

    ``output``: also copy the engine (and its ``.json`` sidecar) there and return that path.
    ``verify``: images for the gate (default: the real images scikit-image ships).
    """
    onnx_path = Path(onnx_path)
    _check_args(onnx_path, precision, calib, workspace_gb, max_batch, opt_batch)
    meta = read_model_meta(str(onnx_path))
    trt = import_tensorrt("building a TensorRT engine")  # before anything is written
    cuda = CudaRT()
    gpu = cuda.device_label(device)
    cuda.set_device(device)  # the builder and the calibrator work on the current device
    flag = {"fp16": "FP16", "int8": "INT8"}.get(precision)
    if flag and not hasattr(trt.BuilderFlag, flag):
        raise ModelError(
            f"TensorRT {trt.__version__} has no BuilderFlag.{flag} (TensorRT 11 "
            f"removed weakly-typed precision flags): build {precision} with "
            f"TensorRT 10.x (JetPack 6 ships 10.3), or use precision fp32"
        )
    calib_arr = None
    extra = {"max_batch": max_batch, "opt_batch": opt_batch, "input_size": meta.input_size}
    if precision == "int8":
        calib_arr, _ = load_calibration_images(calib, meta.resize, log=log)
        extra["calib_sha256"] = calibration_digest(calib_arr)
    sha = sha256_file(onnx_path)
    key = engine_cache_key(sha, trt.__version__, gpu, precision, extra)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / f"{meta.arch}-{meta.input_size}px-{precision}-{key[:16]}.engine"
    side = Path(str(final) + ".json")
    if final.is_file() and side.is_file() and not rebuild:
        log(f"[dn2] engine cache hit: {final}")
    else:
        log(
            f"[dn2] engine cache miss: key {key[:16]} (TensorRT {trt.__version__}, {gpu}, {precision})"
        )
        cache.mkdir(parents=True, exist_ok=True)
        batch = _verify_batch(meta, verify, calib_arr, log)
        plan = _build_plan(
            trt,
            cuda,
            onnx_path,
            meta,
            precision,
            calib_arr,
            cache / f"{key[:16]}.calib",
            workspace_gb,
            max_batch,
            opt_batch,
            log,
        )
        report = verify_engine(plan, onnx_path, meta, batch, precision, tolerance, device, log)
        sidecar = {
            "props": meta.to_props(),
            "cache_key": key,
            "components": {
                "onnx_sha256": sha,
                "tensorrt": trt.__version__,
                "gpu": gpu,
                "precision": precision,
                "extra": extra,
            },
            "verification": report,
            "onnx": str(onnx_path.resolve()),
        }
        _atomic_write(
            final, plan
        )  # engine first: a cache entry counts only once its sidecar exists
        _atomic_write(side, json.dumps(sidecar, indent=2).encode())
        log(f"[dn2] engine kept: {final}")
    if output is None:
        return final
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, final.read_bytes())
    shutil.copyfile(side, str(out) + ".json")
    log(f"[dn2] engine written: {out}")
    return out
