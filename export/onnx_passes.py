"""Small clean-up passes on the exported ONNX graph (onnx protobuf in, same out).

The TorchScript exporter lowers ``F.pad`` with constant pads into a chain of
Constant/ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast nodes feeding a Pad, and keeps
Identity aliases of shared initializers. Both confuse quantization and TensorRT parsing. Here:

* ``fold_pads_into_convs``: zero Pads feeding a Conv become the Conv's (asymmetric) ``pads``
  attribute (ONNX Conv allows begin != end), which is exactly TensorFlow "SAME" padding;
* ``pin_input_reshapes``: ``Reshape(x, Shape(images))`` (the preprocessing's pixels back into
  the input's shape) gets the constant shape ``[-1, S, S, 3]``, so shape inference sees every
  convolution's size (the batch stays dynamic);
* ``remove_identities``, ``constants_to_initializers`` and ``remove_dead_nodes``.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np


def _consumers(graph) -> Dict[str, List]:
    out: Dict[str, List] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _eval_tensors(model, names: List[str], input_shape) -> Dict[str, np.ndarray]:
    """Values of intermediate tensors that do not depend on the input (pads), via onnxruntime."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.zeros(input_shape, dtype=np.uint8)}
    return dict(zip(names, sess.run(names, feed)))


def fold_pads_into_convs(model, input_shape) -> int:
    """Fold constant zero Pad -> Conv pairs into the Conv. Returns how many were folded."""
    import onnx

    graph = model.graph
    users = _consumers(graph)
    candidates = []
    for node in graph.node:
        if node.op_type != "Pad" or len(node.input) < 2:
            continue
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
        if mode != "constant" or (len(node.input) > 2 and node.input[2]):
            continue  # only zero-valued constant padding folds into Conv
        nxt = users.get(node.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Conv" and nxt[0].input[0] == node.output[0]:
            candidates.append((node, nxt[0]))
    if not candidates:
        return 0
    values = _eval_tensors(model, [p.input[1] for p, _ in candidates], input_shape)
    folded = []
    for pad, conv in candidates:
        pads = [int(v) for v in values[pad.input[1]]]
        rank = len(pads) // 2
        begin, end = pads[:rank], pads[rank:]
        if rank < 3 or any(begin[:2]) or any(end[:2]) or min(pads) < 0:
            continue  # padding of batch/channel axes, or cropping: leave it
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * (rank - 2))
        k = rank - 2
        new = [old[i] + begin[2 + i] for i in range(k)] + [
            old[k + i] + end[2 + i] for i in range(k)
        ]
        if "pads" in attrs:
            conv.attribute.remove(attrs["pads"])
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    remove_dead_nodes(model)
    return len(folded)


def remove_identities(model) -> int:
    graph = model.graph
    outputs = {o.name for o in graph.output}
    alias = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    if not alias:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(alias)


def remove_dead_nodes(model) -> None:
    """Drop nodes (and initializers) whose outputs nothing uses."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    live.reverse()
    if len(live) != len(graph.node):
        del graph.node[:]
        graph.node.extend(live)
    unused = [t for t in graph.initializer if t.name not in needed]
    for t in unused:
        graph.initializer.remove(t)


def constants_to_initializers(model) -> int:
    """Constant nodes holding a tensor become initializers (what quantizers and TensorRT expect
    for e.g. Clip bounds)."""
    graph = model.graph
    moved = []
    for node in graph.node:
        if (
            node.op_type == "Constant"
            and len(node.attribute) == 1
            and node.attribute[0].name == "value"
        ):
            tensor = node.attribute[0].t
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved.append(node)
    for node in moved:
        graph.node.remove(node)
    return len(moved)


def pin_input_reshapes(model, input_shape) -> int:
    """``Reshape(x, Shape(input))`` -> ``Reshape(x, [-1, *input_shape[1:]])``; returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    source = graph.input[0].name
    whole = {  # Shape nodes of the whole input (no start / end attributes)
        n.output[0]
        for n in graph.node
        if n.op_type == "Shape" and n.input[0] == source and not n.attribute
    }
    pinned = 0
    for node in graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in whole:
            name = f"{node.name or 'reshape'}_input_shape"
            value = np.array([-1, *input_shape[1:]], np.int64)
            graph.initializer.append(numpy_helper.from_array(value, name))
            node.input[1] = name
            pinned += 1
    return pinned


def clean(model, input_shape) -> Dict[str, int]:
    """All passes; returns counts for the log."""
    ids = remove_identities(model)
    pinned = pin_input_reshapes(model, input_shape)
    pads = fold_pads_into_convs(model, input_shape)
    consts = constants_to_initializers(model)
    remove_dead_nodes(model)
    return {
        "identities_removed": ids,
        "pads_folded": pads,
        "constants_moved": consts,
        "reshapes_pinned": pinned,
    }
