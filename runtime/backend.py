"""The backend interface: a uint8 NHWC BGR batch in, a dict of named outputs out.

    backend.meta          ModelMeta: input size, resize rule, outputs (dn2.runtime.modelmeta)
    backend.provider      what a real warm-up inference ran on (e.g. CPUExecutionProvider)
    backend.batch_size    images per inference call (``run`` chunks larger batches)
    backend.run(uint8 [N, S, S, 3], outputs=None) -> {"embedding": float32 [N, D], ...}
                          (``outputs``: only these names; None: every output of the model)
    backend.close()

Two implementations: ``dn2.runtime.ort_backend.OrtBackend`` (an onnxruntime session on the
CPU, CUDA or TensorRT execution provider) and ``dn2.runtime.trt_engine.TrtEngine`` (a native
TensorRT engine). The Embedder (decoding, resizing, batching) and the Detector sit on either.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import ModelError
from .modelmeta import ModelMeta


@runtime_checkable
class Backend(Protocol):
    meta: ModelMeta
    provider: str
    batch_size: int

    def run(
        self, batch: np.ndarray, outputs: Optional[Sequence[str]] = None
    ) -> Dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def open_backend(
    model_path: Any,
    kind: str = "onnxruntime",
    providers: Any = "auto",
    threads: Optional[int] = None,
    batch_size: int = 8,
    allow_fp16: bool = True,
    engine: Any = None,
    meta: Optional[ModelMeta] = None,
) -> Backend:
    """A backend over ``model_path``: ``kind`` "onnxruntime" (providers: auto, cpu, cuda,
    tensorrt, ...) or "tensorrt" (a native engine file ``engine`` built from that model; its
    metadata comes from ``meta`` or the ONNX file)."""
    if kind == "onnxruntime":
        from .ort_backend import OrtBackend

        return OrtBackend(
            model_path,
            providers=providers,
            threads=threads,
            batch_size=batch_size,
            allow_fp16=allow_fp16,
        )
    if kind == "tensorrt":
        if engine is None:
            raise ModelError("backend 'tensorrt': expected an engine file (engine=...), found none")
        from .trt_engine import TrtEngine

        if meta is None:
            from .modelmeta import read_model_meta

            meta = read_model_meta(str(model_path))
        return TrtEngine(engine, batch_size=batch_size, meta=meta)
    raise ModelError(f"backend: expected 'onnxruntime' or 'tensorrt', found {kind!r}")
