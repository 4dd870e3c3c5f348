"""Run a dn2 TensorRT engine natively (TensorRT 10 Python API + cuda-python), no onnxruntime.

A backend (``dn2.runtime.backend``): ``run(uint8 [N, S, S, 3]) -> {"embedding": [N, D], ...}``
(chunked by ``batch_size``), so ``Embedder(backend=TrtEngine(...))`` and a Detector can sit on
it; also ``embed_batch(uint8 [N, S, S, 3]) -> float32 [N, D]`` and ``embed_images(list of BGR
arrays)``. The engine's I/O tensors are checked by ``dn2.runtime.contract``. Only GPU boxes
use it; without TensorRT or a GPU it raises a ``Dn2Error`` that says what is missing. Engines come from
``dn2.export.tensorrt.build_engine``; the JSON sidecar next to an engine (``<engine>.json``)
carries the ONNX model's dn2 metadata (resize rule, arch, ...), since an engine file has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .contract import TensorSig, check_signature, check_single_output
from .cuda_rt import CUDA_HINT, CudaRT, stream_handle
from .errors import Dn2Error, ImageError, MissingExtraError, ModelError
from .modelmeta import EMBEDDING, INPUT_NAME, ModelMeta

PROVIDER = "TensorRT (native engine)"
TRT_HINT = (
    "the TensorRT Python API (x86_64: pip install 'tensorrt-cu12>=10,<11'; Jetson: it "
    "comes with JetPack 6, apt install python3-libnvinfer) and " + CUDA_HINT
)


class TensorRTMissing(MissingExtraError):
    """TensorRT is not importable; the message says what to install and that a GPU is needed."""

    def __init__(self, purpose: str):
        Dn2Error.__init__(
            self,
            f"tensorrt is not installed ({purpose}): needs {TRT_HINT}; "
            f"or pip install 'dn2[tensorrt]' on an x86_64 CUDA 12 machine",
        )
        self.module, self.extra = "tensorrt", "tensorrt"


def import_tensorrt(purpose: str) -> Any:
    """``import tensorrt`` (major >= 10), or a clear ``TensorRTMissing``/``ModelError``."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTMissing(purpose) from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ModelError(
            f"TensorRT {trt.__version__} found; dn2 needs the TensorRT 10 API "
            f"(JetPack 6.1+ ships 10.3; x86_64: pip install 'tensorrt-cu12>=10,<11')"
        )
    return trt


def check_batch(x: Any, size: int) -> np.ndarray:
    """The graph's input contract: uint8 [N, size, size, 3] (NHWC, BGR), N >= 1; C-contiguous."""
    if not isinstance(x, np.ndarray):
        raise ImageError(
            f"expected a numpy uint8 array [N, {size}, {size}, 3], found {type(x).__name__}"
        )
    if x.dtype != np.uint8:
        raise ImageError(
            f"expected uint8 pixels [N, {size}, {size}, 3] (BGR, 0..255), found "
            f"dtype {x.dtype}; the engine casts and normalises inside the graph"
        )
    if x.ndim != 4 or x.shape[1:] != (size, size, 3) or x.shape[0] < 1:
        raise ImageError(
            f"expected a batch of shape [N, {size}, {size}, 3] with N >= 1, found {tuple(x.shape)}"
        )
    return np.ascontiguousarray(x)


def read_sidecar(engine_path: Path) -> Optional[dict]:
    side = Path(str(engine_path) + ".json")
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{side}: expected the engine's JSON sidecar, found unreadable content: {exc}"
        ) from None


class TrtEngine:
    """A deserialized engine + one execution context, stream and pinned I/O buffers."""

    provider = PROVIDER

    def __init__(
        self, engine: Any, batch_size: int = 8, meta: Optional[ModelMeta] = None, device: int = 0
    ):
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
                raise ModelError(
                    f"{self.path}: expected a TensorRT engine file, found no such file"
                )
            data, side = self.path.read_bytes(), read_sidecar(self.path)
        self.meta = (
            meta
            if meta is not None
            else (
                ModelMeta.from_props(side["props"], source=str(self.path))
                if side and "props" in side
                else None
            )
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelError(
                f"{self.path or 'engine bytes'}: TensorRT {trt.__version__} could not "
                f"deserialize it; engines only run on the TensorRT version and GPU "
                f"they were built with (rebuild: dn2-export --tensorrt)"
            )
        self._bind_io(trt, batch_size)

    def _signature(self, trt: Any):
        eng = self.engine
        types = {trt.DataType.UINT8: "tensor(uint8)", trt.DataType.FLOAT: "tensor(float)"}
        ins, outs = [], []
        for i in range(eng.num_io_tensors):
            n = eng.get_tensor_name(i)
            dt = eng.get_tensor_dtype(n)
            sig = TensorSig(
                n, types.get(dt, str(dt)), tuple(int(d) for d in eng.get_tensor_shape(n))
            )
            (ins if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT else outs).append(sig)
        return ins, outs

    def _bind_io(self, trt: Any, batch_size: int) -> None:
        eng = self.engine
        ins, outs = self._signature(trt)
        where = f"{self.path or 'engine bytes'}"
        if self.meta is not None:
            check_signature(self.meta, ins, outs, where)
        else:  # no metadata: a single-output engine, its output read as the embedding
            size, dim = check_single_output(ins, outs, where + " (no metadata sidecar)")
            self._anon = (size, dim, outs[0].name)
        meta = self.meta
        self.input_size = meta.input_size if meta else self._anon[0]
        self.dim = meta.dim if meta else self._anon[1]
        # logical name -> (graph tensor, per-image shape)
        self._outs = (
            {o.name: (o.graph_name, tuple(int(d) for d in o.shape[1:])) for o in meta.outputs}
            if meta
            else {EMBEDDING: (self._anon[2], (self.dim,))}
        )
        lo, _, hi = (tuple(s) for s in eng.get_tensor_profile_shape(INPUT_NAME, 0))
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.batch_size = max(self.min_batch, min(int(batch_size), self.max_batch))
        self.context = eng.create_execution_context()
        self.stream = self.cuda.stream_create()
        s, b = self.input_size, self.batch_size
        self._in_nbytes = s * s * 3
        self._d_in = self._malloc(b * self._in_nbytes)
        self._h_in_ptr, self._h_in = self.cuda.host_alloc((b, s, s, 3), np.uint8)
        self._hosts.append(self._h_in_ptr)
        self.context.set_tensor_address(INPUT_NAME, self._d_in)
        self._out_bufs: Dict[
            str, tuple
        ] = {}  # logical name -> (device ptr, host ptr, host array, bytes/img)
        for name, (tensor, shape) in self._outs.items():
            nbytes = int(np.prod(shape)) * 4
            d = self._malloc(b * nbytes)
            hp, h = self.cuda.host_alloc((b,) + shape, np.float32)
            self._hosts.append(hp)
            self.context.set_tensor_address(tensor, d)
            self._out_bufs[name] = (d, hp, h, nbytes)

    def _malloc(self, nbytes: int) -> int:
        ptr = self.cuda.malloc(nbytes)
        self._bufs.append(ptr)
        return ptr

    def _run(self, chunk: np.ndarray, names: Sequence[str]) -> Dict[str, np.ndarray]:
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
        for name in names:
            d, hp, _, nbytes = self._out_bufs[name]
            self.cuda.d2h(hp, d, m * nbytes, self.stream)
        self.cuda.synchronize(self.stream)
        return {name: self._out_bufs[name][2][:n].copy() for name in names}

    @property
    def output_names(self) -> List[str]:
        return list(self._outs)

    def run(
        self, batch: np.ndarray, outputs: Optional[Sequence[str]] = None
    ) -> Dict[str, np.ndarray]:
        """uint8 [N, S, S, 3] -> {name: float32 [N, ...]} (every output, or ``outputs``)."""
        x = check_batch(batch, self.input_size)
        names = [n for n in self._outs if outputs is None or n in outputs]
        parts = [
            self._run(x[i : i + self.batch_size], names) for i in range(0, len(x), self.batch_size)
        ]
        return {n: np.concatenate([p[n] for p in parts], axis=0) for n in names}

    def embed_batch(self, x: np.ndarray) -> np.ndarray:
        return self.run(x, [EMBEDDING])[EMBEDDING]

    def embed_images(self, imgs: Sequence[np.ndarray]) -> np.ndarray:
        if self.meta is None:
            raise ModelError(
                "embed_images needs the model's resize rule: keep the engine's "
                "<engine>.json sidecar next to it, or pass meta=read_model_meta(onnx)"
            )
        from .images import prepare

        if not len(imgs):
            return np.zeros((0, self.dim), np.float32)
        batch = np.stack(
            [prepare(im, self.meta.resize, name=f"image {i}") for i, im in enumerate(imgs)]
        )
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

    def __enter__(self) -> TrtEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: the process may be shutting down
        try:
            self.close()
        except Exception:
            pass
