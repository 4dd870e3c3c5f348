"""A thin, checked wrapper over the CUDA runtime from cuda-python (no torch, no pycuda).

Only the native TensorRT paths use it (``dn2.runtime.trt_engine``, ``dn2.export.tensorrt``).
cuda-python is on PyPI for x86_64 and aarch64 (Jetson included); its major version must match
the CUDA major of the driver (JetPack 6 = CUDA 12: ``pip install 'cuda-python>=12.6,<13'``).
Every call is checked: a CUDA error becomes a ``Dn2Error`` naming the call and the CUDA error.
"""

from __future__ import annotations

import ctypes
from typing import Any, Tuple

import numpy as np

from .errors import Dn2Error, MissingExtraError

CUDA_HINT = (
    "an NVIDIA GPU with its driver (on Jetson: JetPack 6) and cuda-python matching the "
    "driver's CUDA major (JetPack 6 / CUDA 12: pip install 'cuda-python>=12.6,<13')"
)


class CudaError(Dn2Error):
    """A CUDA runtime call failed (no device, driver too old, out of memory, ...)."""


def load_cudart() -> Any:
    """The ``cudart`` module of cuda-python (new layout first, then the pre-12.6 one)."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise MissingExtraError(
                "cuda-python",
                "tensorrt",
                "the native TensorRT path copies buffers with the CUDA runtime; needs " + CUDA_HINT,
            ) from None
    return cudart


class CudaRT:
    """The CUDA runtime calls dn2 needs, each checked."""

    def __init__(self, cudart: Any = None):
        self.rt = cudart if cudart is not None else load_cudart()

    def check(self, result: Any, what: str) -> Any:
        """Unpack ``(err, *values)``; raise ``CudaError`` unless err is cudaSuccess."""
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(err) != 0:
            name = self.rt.cudaGetErrorName(err)[1]
            text = self.rt.cudaGetErrorString(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise CudaError(
                f"CUDA call {what} failed: expected cudaSuccess, found {name} "
                f"({text}); dn2's GPU path needs {CUDA_HINT}"
            )
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def device_count(self) -> int:
        return int(self.check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))

    def device_name(self, device: int = 0) -> str:
        n = self.device_count()
        if not 0 <= device < n:
            raise CudaError(f"expected CUDA device index in [0, {n}), found {device}")
        prop = self.check(self.rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
        return str(name).strip()

    def device_label(self, device: int = 0) -> str:
        """Name plus compute capability, e.g. "Orin (sm_87)": what a TensorRT engine is tied to."""
        name = self.device_name(device)  # checks the device exists first
        prop = self.check(self.rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        return f"{name} (sm_{int(prop.major)}{int(prop.minor)})"

    def set_device(self, device: int) -> None:
        self.check(self.rt.cudaSetDevice(device), f"cudaSetDevice({device})")

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        if ptr:
            self.check(self.rt.cudaFree(ptr), "cudaFree")

    def host_alloc(self, shape: Tuple[int, ...], dtype: Any) -> Tuple[int, np.ndarray]:
        """Page-locked host memory as a numpy array (faster, async-capable copies)."""
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = int(self.check(self.rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        buf = (ctypes.c_uint8 * nbytes).from_address(ptr)
        arr = np.frombuffer(buf, dtype=np.uint8)[: int(np.prod(shape)) * dtype.itemsize]
        return ptr, arr.view(dtype).reshape(shape)

    def host_free(self, ptr: int) -> None:
        if ptr:
            self.check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def stream_create(self) -> Any:
        return self.check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_destroy(self, stream: Any) -> None:
        if stream is not None:
            self.check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: Any) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def h2d(self, dst: int, src_ptr: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(
            self.rt.cudaMemcpyAsync(dst, src_ptr, nbytes, kind, stream), "cudaMemcpyAsync H2D"
        )

    def d2h(self, dst_ptr: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(
            self.rt.cudaMemcpyAsync(dst_ptr, src, nbytes, kind, stream), "cudaMemcpyAsync D2H"
        )


def stream_handle(stream: Any) -> int:
    """The integer handle TensorRT's execute_async_v3 takes (cudaStream_t supports int())."""
    return 0 if stream is None else int(stream)


def gpu_name(device: int = 0) -> str:
    """The CUDA device's name ("NVIDIA H100 80GB HBM3", "Orin", ...); CudaError without a GPU."""
    return CudaRT().device_name(device)
