"""Which onnxruntime execution providers to try, in which order, with which options.

``resolve("auto")`` orders TensorRT > CUDA > CPU among those this onnxruntime build offers;
a name or a list picks providers explicitly (aliases ``tensorrt``/``trt``, ``cuda``, ``cpu``
or full onnxruntime names; a string may be comma-separated, as the CLIs pass it). "Available"
only means the build has the provider compiled in: the Embedder proves the choice with a real
warm-up inference and falls back down the list (logging the reason) when it fails.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import ModelError

log = logging.getLogger("dn2")

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
AUTO_ORDER = (TRT, CUDA, CPU)
ALIASES = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "gpu": CUDA, "cpu": CPU}

Providers = Union[str, Sequence[str], None]


def available() -> List[str]:
    """The execution providers compiled into the installed onnxruntime."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _names(providers: Providers) -> List[str]:
    if providers is None:
        return ["auto"]
    if isinstance(providers, str):
        return [p.strip() for p in providers.split(",") if p.strip()] or ["auto"]
    return [str(p).strip() for p in providers]


def resolve(providers: Providers = "auto", avail: Optional[Sequence[str]] = None) -> List[str]:
    """Ordered provider names to try. ``avail`` defaults to ``available()``.

    ``auto`` -> TensorRT > CUDA > CPU among the available ones. Named providers keep their
    order; a name that is unknown or not in this build is a ``ModelError`` saying what is
    available (so ``--providers cuda`` on a CPU-only install fails loudly instead of silently
    running on the CPU).
    """
    avail = list(available() if avail is None else avail)
    names = _names(providers)
    if names == ["auto"]:
        out = [p for p in AUTO_ORDER if p in avail]
        if not out:
            raise ModelError(
                f"providers auto: expected one of {list(AUTO_ORDER)} in this "
                f"onnxruntime, found only {avail}"
            )
        return out
    out: List[str] = []
    for n in names:
        full = ALIASES.get(n.lower(), n)
        if full == "auto":
            raise ModelError(f"providers: 'auto' cannot be combined with names, found {names}")
        if full not in avail:
            hint = ""
            if full in (TRT, CUDA):
                hint = (
                    " (GPU providers need onnxruntime-gpu: pip uninstall -y onnxruntime && "
                    "pip install 'dn2[gpu]')"
                )
            raise ModelError(
                f"provider {n!r}: expected one of {avail} (or auto, "
                f"{', '.join(sorted(ALIASES))}), found {full!r} not in this "
                f"onnxruntime{hint}"
            )
        if full not in out:
            out.append(full)
    return out


def trt_cache_dir() -> str:
    """Where the TensorRT EP keeps built engines: $DN2_TRT_CACHE or ~/.cache/dn2/trt."""
    return os.environ.get("DN2_TRT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "dn2", "trt"
    )


def provider_options(
    name: str,
    input_size: int,
    precision: str = "fp32",
    allow_fp16: bool = True,
    batch_size: int = 8,
    device_id: int = 0,
) -> Dict[str, Any]:
    """Options for one provider. TensorRT: engine + timing cache on disk (the first run of a
    model builds the engine, minutes on a Jetson; later runs load it), FP16 kernels when the
    model is FP32 and ``allow_fp16``, a batch profile 1..max(64, batch_size). CUDA: defaults
    on ``device_id``. CPU: none."""
    if name == TRT:
        from .gpu_io import tensorrt_ep_options

        cache = trt_cache_dir()
        os.makedirs(cache, exist_ok=True)
        fp16 = bool(allow_fp16) and precision == "fp32"
        return tensorrt_ep_options(
            cache,
            input_size,
            fp16=fp16,
            device_id=device_id,
            opt_batch=max(1, batch_size),
            max_batch=max(64, batch_size),
        )
    if name == CUDA:
        return {"device_id": device_id}
    return {}


def attempts(order: Sequence[str]) -> List[List[str]]:
    """Session provider lists to try in turn: the full order, then without its head, ...

    ``[TRT, CUDA, CPU]`` -> ``[[TRT, CUDA, CPU], [CUDA, CPU], [CPU]]``: each session keeps
    the rest as onnxruntime's per-node fallback, and a failed warm-up drops the head.
    """
    return [list(order[i:]) for i in range(len(order))]


def with_options(
    names: Sequence[str], input_size: int, precision: str, allow_fp16: bool, batch_size: int
) -> List[Tuple[str, Dict[str, Any]]]:
    return [(n, provider_options(n, input_size, precision, allow_fp16, batch_size)) for n in names]
