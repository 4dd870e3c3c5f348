"""Run a dn2 TensorRT engine natively (TensorRT 10 Python API + cuda-python), no onnxruntime.

Same embedding interface as ``dn2.runtime.embedder.Embedder``:
``embed_batch(uint8 [N, S, S, 3]) -> float32 [N, D]`` (chunked by ``batch_size``) and
``embed_images(list of BGR arrays)``. Only GPU boxes use it; without TensorRT or a GPU it
raises a ``Dn2Error`` that says what is missing. Engines come from
``dn2.export.tensorrt.build_engine``; the JSON sidecar next to an engine (``<engine>.json``)
carries the ONNX model's dn2 metadata (resize rule, arch, ...), since an engine file has none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from .cuda_rt import CUDA_HINT, CudaRT, stream_handle
from .errors import Dn2Error, ImageError, MissingExtraError, ModelError
from .modelmeta import INPUT_NAME, OUTPUT_NAME, ModelMeta

PROVIDER = "TensorRT (native engine)"
TRT_HINT = ("the TensorRT Python API (x86_64: pip install 'tensorrt-cu12>=10,<11'; Jetson: it "
            "comes with JetPack 6, apt install python3-libnvinfer) and " + CUDA_HINT)


class TensorRTMissing(MissingExtraError):
    """TensorRT is not importable; the message says what to install and that a GPU is needed."""

    def __init__(self, purpose: str):
        Dn2Error.__init__(self, f"tensorrt is not installed ({purpose}): needs {TRT_HINT}; "
                                f"or pip install 'dn2[tensorrt]' on an x86_64 CUDA 12 machine")
        self.module, self.extra = "tensorrt", "tensorrt"


def import_tensorrt(purpose: str) -> Any:
    """``import tensorrt`` (major >= 10), or a clear ``TensorRTMissing``/``ModelError``."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTMissing(purpose) from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ModelError(f"TensorRT {trt.__version__} found; dn2 needs the TensorRT 10 API "
                         f"(JetPack 6.1+ ships 10.3; x86_64: pip install 'tensorrt-cu12>=10,<11')")
    return trt


def check_batch(x: Any, size: int) -> np.ndarray:
    """The graph's input contract: uint8 [N, size, size, 3] (NHWC, BGR), N >= 1; C-contiguous."""
    if not isinstance(x, np.ndarray):
        raise ImageError(f"expected a numpy uint8 array [N, {size}, {size}, 3], "
                         f"found {type(x).__name__}")
    if x.dtype != np.uint8:
        raise ImageError(f"expected uint8 pixels [N, {size}, {size}, 3] (BGR, 0..255), found "
                         f"dtype {x.dtype}; the engine casts and normalises inside the graph")
    if x.ndim != 4 or x.shape[1:] != (size, size, 3) or x.shape[0] < 1:
        raise ImageError(f"expected a batch of shape [N, {size}, {size}, 3] with N >= 1, "
                         f"found {tuple(x.shape)}")
    return np.ascontiguousarray(x)


def read_sidecar(engine_path: Path) -> Optional[dict]:
    side = Path(str(engine_path) + ".json")
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{side}: expected the engine's JSON sidecar, found unreadable "
                         f"content: {exc}") from None


class TrtEngine:
    """A deserialized engine + one execution context, stream and pinned I/O buffers."""

    provider = PROVIDER

    def __init__(self, engine: Any, batch_size: int = 8, meta: Optional[ModelMeta] = None,
                 device: int = 0):
        self._bufs: List[int] = []
        self._hosts: List[int] = []
        self.stream = None
        trt = import_tensorrt("running a native TensorRT engine")
        self.cuda = CudaRT()
        self.cuda.set_device(device)
        if isinstance(engine, (bytes, bytearray, memoryview)):
            data, self.path, side = bytes(engine), None, None
        else:
            self.path = Path(engine)
            if not self.path.is_file():
                raise ModelError(f"{self.path}: expected a TensorRT engine file, found no such file")
            data, side = self.path.read_bytes(), read_sidecar(self.path)
        self.meta = meta if meta is not None else (
            ModelMeta.from_props(side["props"], source=str(self.path))
            if side and "props" in side else None)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelError(f"{self.path or 'engine bytes'}: TensorRT {trt.__version__} could not "
                             f"deserialize it; engines only run on the TensorRT version and GPU "
                             f"they were built with (rebuild: dn2-export --tensorrt)")
        self._bind_io(trt, batch_size)

    def _bind_io(self, trt: Any, batch_size: int) -> None:
        eng = self.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        ins = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if ins != [INPUT_NAME] or outs != [OUTPUT_NAME]:
            raise ModelError(f"expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, "
                             f"found inputs {ins} and outputs {outs}: not a dn2 engine")
        ishape, oshape = tuple(eng.get_tensor_shape(INPUT_NAME)), tuple(eng.get_tensor_shape(OUTPUT_NAME))
        if (eng.get_tensor_dtype(INPUT_NAME) != trt.DataType.UINT8 or len(ishape) != 4
                or ishape[3] != 3 or ishape[1] != ishape[2]):
            raise ModelError(f"expected input uint8 [N, S, S, 3], found "
                             f"{eng.get_tensor_dtype(INPUT_NAME)} {ishape}")
        if eng.get_tensor_dtype(OUTPUT_NAME) != trt.DataType.FLOAT or len(oshape) != 2:
            raise ModelError(f"expected output float32 [N, D], found "
                             f"{eng.get_tensor_dtype(OUTPUT_NAME)} {oshape}")
        self.input_size, self.dim = int(ishape[1]), int(oshape[1])
        if self.meta is not None and (self.meta.input_size, self.meta.dim) != (self.input_size, self.dim):
            raise ModelError(f"engine is {self.input_size} px -> {self.dim}-d but its metadata says "
                             f"{self.meta.input_size} px -> {self.meta.dim}-d")
        lo, _, hi = (tuple(s) for s in eng.get_tensor_profile_shape(INPUT_NAME, 0))
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.batch_size = max(self.min_batch, min(int(batch_size), self.max_batch))
        self.context = eng.create_execution_context()
        self.stream = self.cuda.stream_create()
        s, b = self.input_size, self.batch_size
        self._in_nbytes, self._out_nbytes = s * s * 3, self.dim * 4
        self._d_in = self._malloc(b * self._in_nbytes)
        self._d_out = self._malloc(b * self._out_nbytes)
        self._h_in_ptr, self._h_in = self.cuda.host_alloc((b, s, s, 3), np.uint8)
        self._hosts.append(self._h_in_ptr)
        self._h_out_ptr, self._h_out = self.cuda.host_alloc((b, self.dim), np.float32)
        self._hosts.append(self._h_out_ptr)
        self.context.set_tensor_address(INPUT_NAME, self._d_in)
        self.context.set_tensor_address(OUTPUT_NAME, self._d_out)

    def _malloc(self, nbytes: int) -> int:
        ptr = self.cuda.malloc(nbytes)
        self._bufs.append(ptr)
        return ptr

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        s = self.input_size
        if n < self.min_batch:  # pad up to the profile's minimum, drop the padding after
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_batch - n, axis=0)])
        m = chunk.shape[0]
        np.copyto(self._h_in[:m], chunk)
        self.context.set_input_shape(INPUT_NAME, (m, s, s, 3))
        self.cuda.h2d(self._d_in, self._h_in_ptr, m * self._in_nbytes, self.stream)
        if not self.context.execute_async_v3(stream_handle(self.stream)):
            raise ModelError(f"TensorRT execution failed for a batch of {m} (see its log above)")
        self.cuda.d2h(self._h_out_ptr, self._d_out, m * self._out_nbytes, self.stream)
        self.cuda.synchronize(self.stream)
        return self._h_out[:n].copy()

    def embed_batch(self, x: np.ndarray) -> np.ndarray:
        x = check_batch(x, self.input_size)
        parts = [self._run(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(parts, axis=0)

    def embed_images(self, imgs: Sequence[np.ndarray]) -> np.ndarray:
        if self.meta is None:
            raise ModelError("embed_images needs the model's resize rule: keep the engine's "
                             "<engine>.json sidecar next to it, or pass meta=read_model_meta(onnx)")
        from .images import prepare

        if not len(imgs):
            return np.zeros((0, self.dim), np.float32)
        batch = np.stack([prepare(im, self.meta.resize, name=f"image {i}")
                          for i, im in enumerate(imgs)])
        return self.embed_batch(batch)

    def close(self) -> None:
        cuda = getattr(self, "cuda", None)
        if cuda is None:
            return
        for ptr in self._bufs:
            cuda.free(ptr)
        for ptr in self._hosts:
            cuda.host_free(ptr)
        self._bufs, self._hosts = [], []
        if self.stream is not None:
            cuda.stream_destroy(self.stream)
            self.stream = None

    def __enter__(self) -> "TrtEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: the process may be shutting down
        try:
            self.close()
        except Exception:
            pass
