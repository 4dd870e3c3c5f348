"""Model FLOPs, counted from the ONNX graph (not from a per-arch table).

Method: fix the batch dimension to 1, run ``onnx.shape_inference``, and sum multiply-accumulates
of every Conv, Gemm and MatMul (and their QLinear twins):

* Conv:   N * Cout * Hout * Wout * (Cin / group) * prod(kernel)
* Gemm / MatMul: prod(output shape) * K (the reduced dimension)

FLOPs = 2 * MACs. Element-wise ops (BatchNorm if unfused, ReLU, pooling, the in-graph
normalisation) are not counted: they are < 1% of a ResNet and add no sgemm-comparable work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from dn2.runtime.errors import ModelError

METHOD = (
    "onnx graph, batch 1: 2 x MACs of Conv/Gemm/MatMul (QLinear* too) from onnx shape "
    "inference; element-wise ops not counted"
)

# op type -> (index of the data input, index of the weight input)
_CONV_OPS = {"Conv": (0, 1), "QLinearConv": (0, 3), "ConvInteger": (0, 1)}
_MATMUL_OPS = {"MatMul": (0, 1), "Gemm": (0, 1), "QLinearMatMul": (0, 3), "MatMulInteger": (0, 1)}


def _dims(type_proto) -> Optional[List[int]]:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    out = []
    for d in type_proto.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            return None
        out.append(int(d.dim_value))
    return out


def _shape_table(graph) -> Dict[str, List[int]]:
    table: Dict[str, List[int]] = {}
    for init in graph.initializer:
        table[init.name] = [int(d) for d in init.dims]
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = _dims(vi.type)
        if dims is not None:
            table[vi.name] = dims
    return table


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def count_model_flops(model_path: str | Path) -> Dict[str, object]:
    """FLOPs per image (batch 1) of an ONNX model. Returns a dict with ``gflops``, ``macs``,
    per-op-type MACs, the op count, and the method text. Raises ``ModelError`` if a Conv/MatMul
    shape cannot be inferred (the count would silently be wrong otherwise)."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is in the export extra
        from dn2.runtime.errors import MissingExtraError

        raise MissingExtraError("onnx", "export", "counting model FLOPs") from exc

    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise ModelError(f"cannot read ONNX model {model_path}: {exc}") from exc
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1  # batch 1: FLOPs per image
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = _shape_table(inferred.graph)

    by_op: Dict[str, int] = {}
    unknown: List[str] = []
    n_ops = 0
    for node in inferred.graph.node:
        if node.op_type in _CONV_OPS:
            _, wi = _CONV_OPS[node.op_type]
            w, y = shapes.get(node.input[wi]), shapes.get(node.output[0])
            if w is None or y is None:
                unknown.append(node.name or node.op_type)
                continue
            # w: [Cout, Cin/group, k...] (grouped and depthwise convs included); y: [N, Cout, H, W]
            macs = _prod(y) * w[1] * _prod(w[2:])
        elif node.op_type in _MATMUL_OPS:
            ai, bi = _MATMUL_OPS[node.op_type]
            a, y = shapes.get(node.input[ai]), shapes.get(node.output[0])
            if a is None or y is None:
                unknown.append(node.name or node.op_type)
                continue
            k = a[-1]
            if node.op_type == "Gemm" and int(_attr(node, "transA", 0)):
                k = a[0]
            macs = _prod(y) * k
        else:
            continue
        n_ops += 1
        by_op[node.op_type] = by_op.get(node.op_type, 0) + int(macs)
    if unknown:
        raise ModelError(
            f"{model_path}: shapes of {len(unknown)} Conv/MatMul nodes could not be "
            f"inferred (first: {unknown[:3]}); cannot count FLOPs"
        )
    macs_total = sum(by_op.values())
    return {
        "gflops": round(2.0 * macs_total / 1e9, 4),
        "macs": macs_total,
        "macs_by_op": by_op,
        "ops_counted": n_ops,
        "method": METHOD,
    }
