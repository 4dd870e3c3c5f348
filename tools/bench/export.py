"""Export-stage benchmark: export time per arch, and bare-model CPU throughput of
onnxruntime fp32 / int8 against torch eager, batch 1 and 8, same thread count.

    python -m dn2.tools.bench.export --threads 2 [--archs resnet18 resnet101 ...] [--json OUT]

Model-only: the input batch is prepared once (real photos as 720p frames, resized and cropped by
the runtime) and fed repeatedly; torch eager gets the same pixels as a normalised float tensor.
End-to-end numbers (decode, preprocess, kNN) are dn2-bench's job.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from dn2.export.archs import ARCH_NAMES
from dn2.runtime.errors import Dn2Error


def _log(msg: str) -> None:
    print(f"[bench-export] {msg}", file=sys.stderr, flush=True)


ROUNDS = 3  # each cell's time is split over rounds that alternate the runtimes (load drift)


def _timed(fn: Callable[[], object], seconds: float, min_reps: int = 2):
    """(calls, seconds) of calling ``fn`` for at least ``seconds`` and ``min_reps`` calls."""
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < seconds:
        fn()
        reps += 1
    return reps, time.perf_counter() - t0


def _throughputs(runs, batch: int, seconds: float) -> Dict[str, float]:
    """img/s of each named callable; rounds interleave them so a change in machine load
    during the measurement spreads over all of them instead of hitting one."""
    calls = {name: 0 for name, _ in runs}
    spent = {name: 0.0 for name, _ in runs}
    for _, fn in runs:  # warm-up, not counted
        fn()
        fn()
    for _ in range(ROUNDS):
        for name, fn in runs:
            n, t = _timed(fn, seconds / ROUNDS)
            calls[name] += n
            spent[name] += t
    return {name: calls[name] * batch / spent[name] for name in calls}


def time_exports(
    archs: List[str], weights: str, input_size: int, out: Path
) -> List[Dict[str, object]]:
    from dn2.export.pipeline import export_model

    rows = []
    if archs:  # untimed warm-up: first-use imports (onnx, onnxruntime, quantizer) and caches
        export_model("resnet18", "none", str(out / "warm-up.onnx"), 32, "fp32", log=lambda m: None)
    for arch in archs:
        t0 = time.perf_counter()
        export_model(arch, weights, str(out / f"{arch}.onnx"), input_size, "fp32", log=_log)
        rows.append(
            {
                "arch": arch,
                "precision": "fp32",
                "weights": weights,
                "input_size": input_size,
                "export_s": round(time.perf_counter() - t0, 2),
            }
        )
        _log(f"exported {arch}: {rows[-1]['export_s']} s")
    return rows


def throughput_table(
    arch: str,
    weights: str,
    input_size: int,
    out: Path,
    calib: List[str],
    threads: int,
    batches: List[int],
    seconds: float,
) -> Dict[str, object]:
    import torch

    from dn2.export.pipeline import export_model
    from dn2.runtime.embedder import Embedder
    from dn2.runtime.images import prepare, read_image
    from dn2.tools.bench.flops import count_model_flops
    from dn2.tools.bench.models import torch_trunk

    torch.set_num_threads(threads)
    paths = {}
    export_s = {}
    for prec in ("fp32", "int8"):
        paths[prec] = out / f"{arch}-{prec}-tp.onnx"
        t0 = time.perf_counter()
        export_model(
            arch,
            weights,
            str(paths[prec]),
            input_size,
            prec,
            calib=str(Path(calib[0]).parent) if prec == "int8" else None,
            log=_log,
        )
        export_s[prec] = round(time.perf_counter() - t0, 2)
    trunk, spec = torch_trunk(arch, weights)
    embedders = {
        p: Embedder(str(paths[p]), providers="auto", threads=threads, batch_size=max(batches))
        for p in paths
    }
    rule = embedders["fp32"].meta.resize
    frames = np.stack([prepare(read_image(p), rule) for p in calib])
    gflops = count_model_flops(str(paths["fp32"]))["gflops"]
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    rows = []
    for b in batches:
        x = frames[np.arange(b) % len(frames)]
        xt = (
            (torch.from_numpy(x[..., ::-1].copy()).permute(0, 3, 1, 2).float() - mean) / std
        ).contiguous()

        def torch_run():
            with torch.inference_mode():
                trunk(xt)

        runs = [("torch eager", torch_run)]
        runs += [(f"onnxruntime {p}", (lambda e=embedders[p]: e.embed_batch(x))) for p in paths]
        for name, ips in _throughputs(runs, b, seconds).items():
            rows.append(
                {
                    "runtime": name,
                    "batch": b,
                    "img_per_s": round(ips, 2),
                    "gflops_per_s": round(ips * gflops, 1),
                }
            )
            _log(f"{name} batch {b}: {ips:.2f} img/s")
    for r in rows:
        ref = next(
            q["img_per_s"]
            for q in rows
            if q["batch"] == r["batch"] and q["runtime"] == "torch eager"
        )
        r["x_torch_eager"] = round(r["img_per_s"] / ref, 2)
    return {
        "arch": arch,
        "weights": weights,
        "threads": threads,
        "gflops_per_image": gflops,
        "provider": embedders["fp32"].provider,
        "export_s": export_s,
        "rows": rows,
    }


def format_tables(res: Dict[str, object]) -> str:
    m = res["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, simd {' '.join(m['simd'])}, load avg "
        f"start {res['load_avg_start']} end {m['load_avg']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"sgemm peak (numpy, {res['sgemm']['threads']} threads): {res['sgemm']['gflops']:.1f} GFLOP/s",
        "",
    ]
    if res.get("exports"):
        lines += [
            "| arch | precision | weights | input | export time s (incl. verification) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['arch']} | {r['precision']} | {r['weights']} | {r['input_size']} | {r['export_s']:.1f} |"
            for r in res["exports"]
        ]
        lines.append("")
    tp = res.get("throughput")
    if tp:
        peak = res["sgemm"]["gflops"]
        lines += [
            f"{tp['arch']} (weights {tp['weights']}), {tp['gflops_per_image']:.2f} GFLOP/image, "
            f"{tp['threads']} threads, provider {tp['provider']}; export s {tp['export_s']}",
            "| runtime | batch | img/s | x torch eager | GFLOP/s | % sgemm peak |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['runtime']} | {r['batch']} | {r['img_per_s']:.2f} | {r['x_torch_eager']:.2f} | "
            f"{r['gflops_per_s']:.1f} | {100 * r['gflops_per_s'] / peak:.0f} |"
            for r in tp["rows"]
        ]
        lines.append("int8 GFLOP/s counts the same multiply-adds as fp32 (effective rate)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.export", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--archs",
        nargs="*",
        default=list(ARCH_NAMES),
        choices=ARCH_NAMES,
        help="archs to time the export of (default all; none: skip)",
    )
    p.add_argument("--weights", default="none", help="weights for every export (default none)")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--throughput-arch", default="resnet101", help="'' skips the throughput table")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per cell (default 8)")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)

    import os

    from dn2.tools.bench.frames import make_frames
    from dn2.tools.bench.report import machine_info
    from dn2.tools.bench.sgemm import measure_sgemm_peak

    try:
        import torch  # imported up front so the first export's time excludes it

        torch.set_num_threads(args.threads)
        res: Dict[str, object] = {"load_avg_start": [round(x, 2) for x in os.getloadavg()]}
        res["sgemm"] = measure_sgemm_peak(args.threads)
        with tempfile.TemporaryDirectory(prefix="dn2-bench-export-") as tmp:
            out = Path(tmp)
            calib = make_frames(out / "frames", 16)
            res["exports"] = time_exports(args.archs, args.weights, args.input_size, out)
            if args.throughput_arch:
                res["throughput"] = throughput_table(
                    args.throughput_arch,
                    args.weights,
                    args.input_size,
                    out,
                    calib,
                    args.threads,
                    args.batch,
                    args.seconds,
                )
        res["machine"] = machine_info()
        print(format_tables(res))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
    except (Dn2Error, OSError) as exc:
        print(f"bench.export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
