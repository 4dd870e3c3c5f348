"""dn2-bench's report: the JSON document and the printed markdown tables.

JSON (schema ``dn2-bench-1``): ``config``, ``machine``, ``sgemm`` (measured peak), ``model_flops``
(how counted), ``pipelines`` (one object per pipeline and batch size: ``name`` containing torch /
fp32 / int8, ``img_per_s``, latency p50/p95, per-stage ms per image, ratio to torch-eager at the
same batch, achieved model-stage GFLOP/s and its share of the sgemm peak), ``agreement``
(embedding cosines between pipelines) and ``goals`` (the speed targets, met or missed).
"""

from __future__ import annotations

import os
import platform
from typing import Dict, List, Optional, Sequence

from .pipelines import STAGES

SCHEMA = "dn2-bench-1"
GOALS = (  # (id, text, target)
    ("fp32_vs_torch", "dn2 fp32 end-to-end / torch-eager", 1.5),
    ("int8_vs_torch", "dn2 int8 end-to-end / torch-eager", 2.7),
    ("e2e_vs_model", "dn2 end-to-end / its bare model throughput", 0.9),
    ("fp32_model_peak", "dn2 fp32 model stage / measured sgemm peak", 0.85),
)


def machine_info() -> Dict[str, object]:
    """CPU model, core count, SIMD flags, load, library versions."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "onnxruntime", "torch", "torchvision", "cv2", "PIL", "onnx"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # not installed, or no __version__: report it as absent
            versions[mod] = None
    simd = [
        f
        for f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
        if f in flags
    ]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "simd": simd,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
    }


def build_report(
    config: Dict[str, object],
    machine: Dict[str, object],
    sgemm: Dict[str, object],
    flops: Optional[Dict[str, object]],
    summaries: Sequence[Dict[str, object]],
    agreement: Optional[Dict[str, object]] = None,
) -> Dict[str, object]:
    peak = float(sgemm["gflops"])
    gf = float(flops["gflops"]) if flops else None
    torch_ips = {s["batch"]: s["img_per_s"] for s in summaries if s["kind"] == "torch"}
    rows: List[Dict[str, object]] = []
    for s in summaries:
        row = dict(s)
        row["name"] = f"{s['name']} b{s['batch']}"
        row["pipeline"] = s["name"]
        ref = torch_ips.get(s["batch"])
        row["x_torch_eager"] = round(s["img_per_s"] / ref, 3) if ref else None
        if gf is not None:
            achieved = gf * (s.get("bare_model_img_per_s") or s["model_only_img_per_s"])
            row["model_gflops_per_s"] = round(achieved, 2)
            row["model_pct_of_sgemm_peak"] = round(100.0 * achieved / peak, 1)
        rows.append(row)
    return {
        "schema": SCHEMA,
        "config": config,
        "machine": machine,
        "sgemm": sgemm,
        "model_flops": flops,
        "pipelines": rows,
        "agreement": agreement or {},
        "goals": evaluate_goals(rows),
    }


def evaluate_goals(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    out = []
    for goal_id, text, target in GOALS:
        for r in rows:
            if goal_id == "fp32_vs_torch" and r["kind"] == "fp32":
                value = r["x_torch_eager"]
            elif goal_id == "int8_vs_torch" and r["kind"] == "int8":
                value = r["x_torch_eager"]
            elif goal_id == "e2e_vs_model" and r["kind"] in ("fp32", "int8"):
                value = r.get("e2e_over_bare_model")
            elif (
                goal_id == "fp32_model_peak"
                and r["kind"] == "fp32"
                and "model_pct_of_sgemm_peak" in r
                and "-jpeg-draft" not in r["name"]
            ):
                value = r["model_pct_of_sgemm_peak"] / 100.0
            else:
                continue
            if value is None:
                continue
            out.append(
                {
                    "goal": goal_id,
                    "what": f"{text} ({r['name']})",
                    "target": target,
                    "measured": round(float(value), 3),
                    "met": bool(value >= target),
                }
            )
    return out


def _f(x, nd=1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def format_tables(report: Dict[str, object]) -> str:
    """The markdown tables dn2-bench prints."""
    cfg, m, sg, fl = report["config"], report["machine"], report["sgemm"], report["model_flops"]
    lines = [
        f"dn2-bench: {cfg['arch']} weights={cfg['weights']} input {cfg['input_size']}px, "
        f"{cfg['n_images']} images of {cfg['frame_size']} ({cfg['images_source']}), "
        f"{cfg['passes']} pass(es), {cfg['threads']} threads, bank {cfg['bank_size']}x{cfg.get('dim')}, k={cfg['k']}",
        f"machine: {m['cpu']}, {m['cores']} cores, simd {' '.join(m['simd'])}; load avg at start "
        f"{cfg.get('load_avg_start')} end {m['load_avg']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"sgemm peak (numpy {sg.get('blas')}, {sg['threads']} threads): {sg['gflops']:.1f} GFLOP/s "
        f"(per size {sg['per_size']})",
    ]
    if fl:
        lines.append(f"model: {fl['gflops']:.3f} GFLOP per image ({fl['method']})")
    lines += [
        "",
        "| pipeline | img/s | x torch | p50 ms | p95 ms | decode | preproc | model | kNN "
        "| decision | e2e ms/img | bare model img/s | e2e/bare | model GFLOP/s | % peak |",
        "|" + "---|" * 15,
    ]
    for r in report["pipelines"]:
        st = r["stages_ms_per_image"]
        lines.append(
            f"| {r['name']} | {r['img_per_s']:.2f} | {_f(r['x_torch_eager'], 2)} | "
            f"{r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | "
            + " | ".join(_f(st[s], 2 if s != "decision" else 3) for s in STAGES)
            + f" | {r['e2e_ms_per_image']:.2f} | {_f(r.get('bare_model_img_per_s'), 2)} | "
            f"{_f(r.get('e2e_over_bare_model'), 3)} | {_f(r.get('model_gflops_per_s'))} | "
            f"{_f(r.get('model_pct_of_sgemm_peak'))} |"
        )
    lines.append(
        "stage columns: ms per image inside the pipeline; p50/p95: latency of one batch, "
        "decode to decision; bare model: the model stage alone on prepared batches, "
        "back to back; e2e/bare: end-to-end img/s over bare model img/s; model GFLOP/s "
        "and % peak: the bare model stage"
    )
    ovl = [r for r in report["pipelines"] if r.get("overlapped_img_per_s")]
    if ovl:
        lines.append(
            "overlapped (decode pool, model and kNN overlapped as dn2 score runs them): "
            + ", ".join(
                f"{r['name']} batch {r['batch']} {r['overlapped_img_per_s']:.2f} img/s = "
                f"{_f(r.get('overlapped_over_bare_model'), 3)} of bare"
                for r in ovl
            )
        )
    if report.get("agreement"):
        lines += [
            "",
            "agreement (embedding cosine, same frames): "
            + ", ".join(f"{k} {v}" for k, v in report["agreement"].items()),
        ]
    lines += ["", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in report["goals"]:
        lines.append(
            f"| {g['what']} | >= {g['target']} | {g['measured']:.3f} | "
            f"{'yes' if g['met'] else 'NO'} |"
        )
    return "\n".join(lines)
