"""The one reader of the dn2 model contract: a backend's graph signature against the metadata.

Every backend (the onnxruntime session, the native TensorRT engine, the I/O-binding runner)
describes its graph as ``TensorSig`` lists and calls :func:`check_signature`; the metadata side
is ``dn2.runtime.modelmeta.ModelMeta`` (its ``outputs``). Backends hand their results back
through :func:`named_outputs`: a dict keyed by the *logical* output names (``embedding``, and
whatever else the model lists), so a dn2-model-1 graph's ``embeddings`` tensor arrives as
``embedding`` like everybody else's.

Types are written the onnxruntime way (``tensor(uint8)``, ``tensor(float)``); a dimension is
static when it is a positive int, anything else (``"N"``, None, -1) is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ModelError
from .modelmeta import EMBEDDING, INPUT_NAME, K_OUTPUTS, V1_OUTPUT_NAME, ModelMeta

UINT8, FLOAT = "tensor(uint8)", "tensor(float)"


@dataclass(frozen=True)
class TensorSig:
    """One graph input or output as a backend sees it."""

    name: str
    type: str  # onnxruntime notation: tensor(uint8), tensor(float), ...
    shape: Tuple[Any, ...]


def static(d: Any) -> Optional[int]:
    """A dimension as an int when it is static, else None."""
    return d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None


def ort_signature(sess: Any) -> Tuple[List[TensorSig], List[TensorSig]]:
    """(inputs, outputs) of an onnxruntime InferenceSession."""

    def sig(a):
        return TensorSig(a.name, a.type, tuple(a.shape))

    return [sig(i) for i in sess.get_inputs()], [sig(o) for o in sess.get_outputs()]


def _check_input(i: TensorSig, size: Optional[int], source: str) -> None:
    s = "S" if size is None else size
    if i.type != UINT8:
        raise ModelError(f"{source}: input {INPUT_NAME!r} expected {UINT8}, found {i.type}")
    shape = list(i.shape)
    dims = [static(x) for x in shape[1:]]
    ok = (
        len(shape) == 4
        and not static(shape[0])
        and dims[2:] == [3]
        and (
            dims[:2] == [size, size]
            if size is not None
            else dims[0] is not None and dims[0] == dims[1]
        )
    )
    if not ok:
        raise ModelError(
            f"{source}: input {INPUT_NAME!r} expected shape [N, {s}, {s}, 3] with "
            f"dynamic N" + (f" (metadata input size {size})" if size else "") + f", found {shape}"
        )


def _names_error(want: Sequence[str], ins, outs, source: str) -> ModelError:
    what = f"one output {want[0]!r}" if len(want) == 1 else f"outputs {list(want)}"
    return ModelError(
        f"{source}: expected one input {INPUT_NAME!r} and {what}, found inputs "
        f"{[i.name for i in ins]} and outputs {[o.name for o in outs]}"
    )


def check_signature(
    meta: ModelMeta, ins: Sequence[TensorSig], outs: Sequence[TensorSig], source: str
) -> None:
    """The graph must be the dn2 contract with the metadata's names, types and sizes."""
    want = [o.graph_name for o in meta.outputs]
    if [i.name for i in ins] != [INPUT_NAME] or sorted(o.name for o in outs) != sorted(want):
        raise _names_error(want, ins, outs, source)
    _check_input(ins[0], meta.input_size, source)
    by_name = {o.name: o for o in outs}
    for spec in meta.outputs:
        o = by_name[spec.graph_name]
        if o.type != FLOAT:
            raise ModelError(f"{source}: output {o.name!r} expected {FLOAT}, found {o.type}")
        shape = list(o.shape)
        want_dims = list(spec.shape[1:])
        if len(shape) != len(spec.shape) or [static(x) for x in shape[1:]] != want_dims:
            why = (
                f"metadata embedding dim {meta.dim}"
                if spec.name == EMBEDDING
                else f"metadata {K_OUTPUTS}"
            )
            raise ModelError(
                f"{source}: output {o.name!r} expected shape "
                f"[N, {', '.join(map(str, want_dims))}] ({why}), found {shape}"
            )


def check_single_output(
    ins: Sequence[TensorSig], outs: Sequence[TensorSig], source: str
) -> Tuple[int, int]:
    """A graph known only by its signature (an engine without its metadata sidecar): one
    uint8 [N, S, S, 3] input and one float [N, D] output, read as ``embedding``. -> (S, D)."""
    if [i.name for i in ins] != [INPUT_NAME] or len(outs) != 1:
        raise _names_error([EMBEDDING], ins, outs, source)
    _check_input(ins[0], None, source)
    o = outs[0]
    if o.type != FLOAT or len(o.shape) != 2 or static(o.shape[1]) is None:
        raise ModelError(
            f"{source}: output {o.name!r} expected {FLOAT} [N, D], found {o.type} {list(o.shape)}"
        )
    return int(ins[0].shape[1]), int(o.shape[1])


def named_outputs(meta: ModelMeta, by_tensor: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Graph tensors -> the dict every backend returns, keyed by logical output name."""
    return {o.name: by_tensor[o.graph_name] for o in meta.outputs}


def expected_shape(meta: ModelMeta, name: str, n: int) -> Tuple[int, ...]:
    spec = meta.output(name)
    if spec is None:
        raise ModelError(f"output {name!r}: expected one of {list(meta.output_names)}")
    return (n,) + tuple(int(d) for d in spec.shape[1:])


def embedding_tensor(output_names: Sequence[str]) -> str:
    """The graph tensor holding the embedding, for tools that hold a bare session (e.g. of an
    intermediate file without metadata): ``embedding``, else a dn2-model-1 ``embeddings``,
    else a single output."""
    names = list(output_names)
    for n in (EMBEDDING, V1_OUTPUT_NAME):
        if n in names:
            return n
    if len(names) == 1:
        return names[0]
    raise ModelError(f"expected an output {EMBEDDING!r} among {names}")
