"""Where an onnxruntime CPU session spends its time: onnxruntime's own profiler, per op type.

    python -m dn2.tools.studies.ort_profile MODEL.onnx [MODEL2.onnx ...] --frames DIR
        [--batch 1 8] [--threads 1 2] [--runs 8] [--json OUT]

Each model is opened as the runtime opens it (``dn2.runtime.ort_backend.CPU_SESSION_DEFAULTS``
plus the model's own ``dn2.ort_session_config``), one session per (threads, batch), with
onnxruntime's profiler on; ``--runs`` timed runs after one warm-up on the first ``--batch``
prepared frames of ``--frames`` (decoded and resized by the runtime). Printed per setting:
wall ms per image, the kernels' summed time per image, and per op type (as the optimiser left
the graph: QLinearConv, QLinearAdd, Quantize/DequantizeLinear, Transpose, the float
preprocessing ...) ms per image and share; for the convolutions also per kind (kernel size,
stride) the share and the achieved GFLOP/s (2 x MACs from the weight and output shapes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

CONVS = ("QLinearConv", "Conv", "FusedConv")


def _weights_of(path: str, so) -> Dict[str, List[int]]:
    """Conv node name -> weight shape, from the graph onnxruntime optimised (``so`` saves it)."""
    import onnx

    g = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    dims = {i.name: list(i.dims) for i in g.initializer}
    w_input = {"QLinearConv": 3}
    return {
        n.name: dims.get(n.input[w_input.get(n.op_type, 1)]) for n in g.node if n.op_type in CONVS
    }


def profile(path: str, x: np.ndarray, threads: int, runs: int) -> Dict[str, object]:
    """One session over ``path`` at ``threads``, ``runs`` runs on ``x``: the per-op summary."""
    import onnxruntime as ort

    from dn2.runtime.modelmeta import INPUT_NAME, read_model_meta
    from dn2.runtime.ort_backend import CPU_SESSION_DEFAULTS, ort_config_of

    with tempfile.TemporaryDirectory(prefix="dn2-prof-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        for k, v in {**CPU_SESSION_DEFAULTS, **ort_config_of(read_model_meta(path))}.items():
            so.add_session_config_entry(k, v)
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        weights = _weights_of(path, so)
        sess.run(None, {INPUT_NAME: x})  # warm-up: counted out below
        t0 = time.perf_counter()
        for _ in range(runs):
            sess.run(None, {INPUT_NAME: x})
        wall = (time.perf_counter() - t0) / runs
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: Dict[str, List[float]] = collections.defaultdict(list)
    args = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per_node[name].append(float(e["dur"]))
            args[name] = e["args"]
    n = len(x)
    ops: Dict[str, float] = collections.Counter()
    count: Dict[str, int] = collections.Counter()
    kinds: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for name, durs in per_node.items():
        d = float(np.mean(durs[1:] if len(durs) > 1 else durs))  # drop the warm-up run
        op = args[name]["op_name"]
        ops[op] += d
        count[op] += 1
        w = weights.get(name)
        if op in CONVS and w and len(w) == 4:
            x_shape = list(args[name]["input_type_shape"][0].values())[0]
            y_shape = list(args[name]["output_type_shape"][0].values())[0]
            nhwc = op == "QLinearConv"
            hx, hy = (x_shape[1], y_shape[1]) if nhwc else (x_shape[2], y_shape[2])
            kind = f"{w[2]}x{w[3]} stride {max(1, round(hx / hy))}"
            kinds[kind][0] += d
            kinds[kind][1] += 2.0 * float(np.prod(y_shape)) * float(np.prod(w[1:]))
            kinds[kind][2] += 1
    total = sum(ops.values())
    return {
        "model": os.path.basename(path),
        "threads": threads,
        "batch": n,
        "runs": runs,
        "wall_ms_per_image": round(wall * 1e3 / n, 2),
        "kernels_ms_per_image": round(total / 1e3 / n, 2),
        "ops": [
            {
                "op": op,
                "nodes": count[op],
                "ms_per_image": round(d / 1e3 / n, 3),
                "share": round(d / total, 4),
            }
            for op, d in ops.most_common()
        ],
        "convs": [
            {
                "kind": k,
                "nodes": c,
                "share": round(d / total, 4),
                "gflop_per_s": round(f / d / 1e3, 1),
            }
            for k, (d, f, c) in sorted(kinds.items(), key=lambda t: -t[1][0])
        ],
    }


def format_profile(r: Dict[str, object]) -> str:
    lines = [
        f"{r['model']} threads {r['threads']} batch {r['batch']}: wall "
        f"{r['wall_ms_per_image']} ms/img, kernels {r['kernels_ms_per_image']} ms/img "
        f"({r['runs']} runs)",
        "| op | nodes | ms/img | share |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {o['op']} | {o['nodes']} | {o['ms_per_image']:.3f} | {100 * o['share']:.1f} % |"
        for o in r["ops"]
    ]
    if r["convs"]:
        lines += ["| conv kind | nodes | share of all kernels | GFLOP/s |", "|---|---|---|---|"]
        lines += [
            f"| {c['kind']} | {c['nodes']} | {100 * c['share']:.1f} % | {c['gflop_per_s']} |"
            for c in r["convs"]
        ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.ort_profile",
        description="onnxruntime's profiler over dn2 models: time per op type and conv kind",
    )
    p.add_argument("models", nargs="+", help="dn2 ONNX models")
    p.add_argument("--frames", required=True, help="a folder of images (the first --batch used)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=8, help="timed runs per setting (default 8)")
    p.add_argument("--json", metavar="OUT")
    a = p.parse_args(argv)
    from dn2.runtime.images import find_images, prepare, read_image
    from dn2.runtime.modelmeta import read_model_meta

    paths, _ = find_images([a.frames])
    if len(paths) < max(a.batch) or min(a.batch) < 1 or min(a.threads) < 1 or a.runs < 1:
        p.error(f"--frames: expected at least {max(a.batch)} images, found {len(paths)}")
    print(f"load avg at start {[round(v, 2) for v in os.getloadavg()]}", flush=True)
    out = []
    for model in a.models:
        rule = read_model_meta(model).resize
        x = np.stack([prepare(read_image(q), rule) for q in paths[: max(a.batch)]])
        for t in a.threads:
            for b in a.batch:
                r = profile(model, np.ascontiguousarray(x[:b]), t, a.runs)
                out.append(r)
                print(format_profile(r) + "\n", flush=True)
    print(f"load avg at end {[round(v, 2) for v in os.getloadavg()]}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
