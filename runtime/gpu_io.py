"""onnxruntime on NVIDIA GPUs: provider options and an I/O-binding runner.

* ``tensorrt_ep_options`` / ``cuda_ep_options`` / ``gpu_providers``: the provider list for
  onnxruntime-gpu's TensorRT execution provider (engine + timing cache on disk, fp16, the batch
  profile of the dn2 graph) with the CUDA provider and the CPU as fallbacks.
* ``BoundRunner``: runs uint8 batches through a session with I/O binding. Input and output live
  in OrtValues allocated once per batch size on the session's device and refilled in place, so
  a steady stream of same-sized batches (the camera loop) does one host->device copy of the
  uint8 pixels and one device->host copy of the embeddings per batch, with no per-call device
  allocation. Plain ``session.run`` does the same two copies but allocates the output each call;
  ``tools/bench/gpu.py`` measures both. On the CPU provider it works too (device "cpu").

onnxruntime-gpu and the CPU ``onnxruntime`` package both install the module ``onnxruntime``:
``pip uninstall -y onnxruntime && pip install 'dn2[gpu]'`` (see docs/jetson.md).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .contract import check_signature, ort_signature
from .errors import ModelError
from .modelmeta import EMBEDDING, INPUT_NAME, ModelMeta

TRT_EP, CUDA_EP, CPU_EP = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


def tensorrt_ep_options(
    cache_dir: str,
    input_size: int,
    fp16: bool = True,
    int8_table: Optional[str] = None,
    workspace_gb: float = 4,
    max_batch: int = 64,
    opt_batch: int = 8,
    device_id: int = 0,
) -> Dict[str, Any]:
    """TensorRT EP options for a dn2 graph (input ``images`` uint8 [N, S, S, 3]).

    ``int8_table``: a TensorRT-native calibration table (the ``.calib`` file
    ``dn2.export.tensorrt.build_engine`` leaves in its cache) copied into ``cache_dir``;
    the EP reads it from there by file name.
    """
    s = int(input_size)
    shape = lambda n: f"{INPUT_NAME}:{n}x{s}x{s}x3"  # noqa: E731
    opts: Dict[str, Any] = {
        "device_id": device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": bool(fp16),
        "trt_max_workspace_size": int(workspace_gb * (1 << 30)),
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(opt_batch),
        "trt_profile_max_shapes": shape(max_batch),
    }
    if int8_table is not None:
        opts.update(
            {
                "trt_int8_enable": True,
                "trt_int8_calibration_table_name": os.path.basename(int8_table),
                "trt_int8_use_native_calibration_table": True,
            }
        )
    return opts


def cuda_ep_options(device_id: int = 0) -> Dict[str, Any]:
    # EXHAUSTIVE benchmarks cuDNN convolution algorithms once per shape: slower first batch,
    # fastest steady state, which is what a camera loop lives in.
    return {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"}


def gpu_providers(
    kind: str,
    input_size: int,
    cache_dir: Optional[str] = None,
    fp16: bool = True,
    device_id: int = 0,
) -> List[Tuple[str, Dict[str, Any]]]:
    """Provider list for ``kind`` "tensorrt" (TRT EP -> CUDA -> CPU) or "cuda" (CUDA -> CPU)."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    want = {"tensorrt": [TRT_EP, CUDA_EP], "cuda": [CUDA_EP]}.get(kind)
    if want is None:
        raise ModelError(f"GPU provider kind: expected 'tensorrt' or 'cuda', found {kind!r}")
    if want[0] not in avail:
        raise ModelError(
            f"{want[0]} is not available in this onnxruntime ({ort.__version__}, "
            f"providers {avail}): pip uninstall -y onnxruntime && "
            f"pip install 'dn2[gpu]' (Jetson: the Jetson AI Lab onnxruntime-gpu wheel, "
            f"see docs/jetson.md)"
        )
    out: List[Tuple[str, Dict[str, Any]]] = []
    if kind == "tensorrt":
        cache = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "dn2", "ort-trt")
        os.makedirs(cache, exist_ok=True)
        out.append((TRT_EP, tensorrt_ep_options(cache, input_size, fp16=fp16, device_id=device_id)))
    if CUDA_EP in avail:
        out.append((CUDA_EP, cuda_ep_options(device_id)))
    out.append((CPU_EP, {}))
    return out


def session_device(sess: Any) -> Tuple[str, int]:
    """(ort device name, id) where the session's first provider keeps its tensors."""
    first = sess.get_providers()[0]
    if first in (TRT_EP, CUDA_EP):
        opts = sess.get_provider_options().get(first, {})
        return "cuda", int(opts.get("device_id", 0))
    return "cpu", 0


class BoundRunner:
    """``run(uint8 [N, S, S, 3]) -> float32 [N, D]`` through I/O binding with reused OrtValues;
    ``run_all`` gives every named output (``{"embedding": ..., ...}``)."""

    def __init__(
        self,
        sess: Any,
        device: Optional[str] = None,
        device_id: Optional[int] = None,
        meta: Optional[ModelMeta] = None,
    ):
        import onnxruntime as ort

        self._ort, self.sess = ort, sess
        dev, did = session_device(sess)
        self.device = device or dev
        self.device_id = did if device_id is None else int(device_id)
        if meta is None:
            meta = ModelMeta.from_props(sess.get_modelmeta().custom_metadata_map, source="session")
        check_signature(meta, *ort_signature(sess), "session")
        self.meta = meta
        self.dim = int(meta.dim)
        self._outs = [
            (o.name, o.graph_name, tuple(int(d) for d in o.shape[1:])) for o in meta.outputs
        ]
        self._slots: Dict[Tuple[int, ...], Tuple[Any, Any, Dict[str, Any]]] = {}

    def _slot(self, shape: Tuple[int, ...]) -> Tuple[Any, Any, Dict[str, Any]]:
        slot = self._slots.get(shape)
        if slot is None:
            ov = self._ort.OrtValue.ortvalue_from_shape_and_type
            x = ov(list(shape), np.uint8, self.device, self.device_id)
            io = self.sess.io_binding()
            io.bind_ortvalue_input(INPUT_NAME, x)
            ys = {}
            for name, tensor, per in self._outs:
                ys[name] = ov([shape[0], *per], np.float32, self.device, self.device_id)
                io.bind_ortvalue_output(tensor, ys[name])
            slot = self._slots[shape] = (io, x, ys)
            if len(self._slots) > 8:  # a stream of ragged batch sizes: keep the newest few
                self._slots.pop(next(iter(self._slots)))
        return slot

    def run_all(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ModelError(f"expected uint8 [N, S, S, 3], found {batch.dtype} {batch.shape}")
        io, x, ys = self._slot(tuple(batch.shape))
        x.update_inplace(np.ascontiguousarray(batch))  # the one host->device copy
        io.synchronize_inputs()
        self.sess.run_with_iobinding(io)
        io.synchronize_outputs()
        out = {}
        for name, y in ys.items():
            a = y.numpy()  # the one device->host copy (on "cpu" a view of the reused buffer)
            out[name] = a.copy() if self.device == "cpu" else a
        return out

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_all(batch)[EMBEDDING]
