"""Which int8 quantization is fast AND faithful on this CPU: onnxruntime's quantizer settings
against fp32, each run on the default (fast) kernels and on the exact ones
(``session.x64quantprecision=1``).

    python -m dn2.tools.studies.int8 --arch efficientnet_lite0 --weights imagenet --work-dir W
    python -m dn2.tools.studies.int8 --arch resnet101 --weights none --no-accuracy --work-dir W

Every setting is quantized by the exporter's own ``dn2.export.int8config.quantize_with``,
calibrated on the exporter's default calibration images (scikit-image's 16 sample photos).
Per setting and kernel set: embedding cosine vs fp32 (min / mean over every study image), kNN
rank agreement (``dn2.export.gate.rank_agreement``: Spearman of leave-one-out k=2 scores; on
the 16 photos, the gate's own measure, and on the 200 textile and 200 Fashion-MNIST test
images), ROC-AUC delta vs fp32 in points (x100) on a Fashion-MNIST one-class subsample and on
textile global / local defects, and the bare model's img/s at batch 1 and 8 measured in one
interleaved run (``--threads``, default 2). Prints the machine's SIMD flags, the load, one
JSON line per row and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from dn2.export.int8config import Int8Settings
from dn2.export.quantize import ORT_INT8_CONFIG as EXACT

BASE = Int8Settings()
LITE_SETTINGS = (
    BASE,
    Int8Settings(reduce_range=True),
    Int8Settings(weights="u8"),
    Int8Settings(per_channel=False),
    Int8Settings(per_channel=False, reduce_range=True),
    Int8Settings(symmetric_activations=True),
    Int8Settings(fmt="qoperator"),
    Int8Settings(calibration="entropy"),
    Int8Settings(calibration="percentile"),
    Int8Settings(float_first=1),
    Int8Settings(float_last=2),
    Int8Settings(float_first=8),
    Int8Settings(float_first=12),
    Int8Settings(float_first=16),
    Int8Settings(reduce_range=True, calibration="percentile"),
    Int8Settings(reduce_range=True, float_first=8),
    Int8Settings(reduce_range=True, float_first=12),
    Int8Settings(reduce_range=True, float_first=16),
    Int8Settings(reduce_range=True, float_first=24),
    Int8Settings(weights="u8", float_first=8),
)
RESNET_SETTINGS = (
    BASE,
    Int8Settings(reduce_range=True),
    Int8Settings(weights="u8"),
    Int8Settings(per_channel=False),
    Int8Settings(fmt="qoperator"),
)


def _log(msg: str) -> None:
    print(f"[int8-study] {msg}", file=sys.stderr, flush=True)


def int8_flags() -> List[str]:
    """The SIMD flags that decide the int8 kernels (avx2, avx512*, *vnni*, amx*)."""
    from dn2.export.quantize import cpu_flags

    keep = ("avx2", "fma", "f16c")
    return sorted(
        f for f in cpu_flags() if f in keep or f.startswith(("avx512", "amx")) or "vnni" in f
    )


def embed(path: str, images: np.ndarray, config: Dict[str, str], threads: int) -> np.ndarray:
    from dn2.export.verify import ort_embed

    return ort_embed(path, images, config, threads=threads)


def aurocs(emb: np.ndarray, data, sl: Dict[str, slice]) -> Dict[str, float]:
    """ROC-AUC (fractions) of the fp32-protocol scores: FMNIST one-class mean, textile g / l."""
    from dn2.runtime.bank import build_bank
    from dn2.runtime.scoring import knn_score
    from dn2.runtime.threshold import roc_auc

    out = {}
    test, labels = emb[sl["fmnist_test"]], data.fmnist_test_labels
    per = []
    for c in data.fmnist_train:
        s = knn_score(build_bank(emb[sl[f"fmnist_train_{c}"]], index="exact"), test, 2)
        per.append(roc_auc(s[labels == c], s[labels != c]))
    out["fmnist"] = float(np.mean(per))
    bank = build_bank(emb[sl["textile_train"]], index="exact")
    held = knn_score(bank, emb[sl["textile_held"]], 2)
    out["textile_global"] = roc_auc(held, knn_score(bank, emb[sl["textile_global"]], 2))
    out["textile_local"] = roc_auc(held, knn_score(bank, emb[sl["textile_local"]], 2))
    return out


def agreement(ref: np.ndarray, out: np.ndarray, sl: Dict[str, slice]) -> Dict[str, float]:
    from dn2.export.gate import rank_agreement
    from dn2.export.verify import cosines

    cos = cosines(ref.astype(np.float64), out.astype(np.float64))
    row = {"cos_min": float(cos.min()), "cos_mean": float(cos.mean())}
    row["rank_gate"] = rank_agreement(ref[sl["photos"]], out[sl["photos"]])
    textile = np.r_[sl["textile_held"], sl["textile_global"], sl["textile_local"]]
    if textile.size:
        row["rank_textile"] = rank_agreement(ref[textile], out[textile])
    if sl["fmnist_test"].stop > sl["fmnist_test"].start:
        row["rank_fmnist"] = rank_agreement(ref[sl["fmnist_test"]], out[sl["fmnist_test"]])
    return row


def speeds(models: Dict[str, tuple], frames: np.ndarray, threads: int, seconds: float) -> Dict:
    """{name: {b1, b8}} img/s, all models interleaved in rounds (``bench.export``'s timer)."""
    from dn2.export.verify import ort_session
    from dn2.tools.bench.export import _throughputs

    sessions = {n: ort_session(p, c, threads) for n, (p, c) in models.items()}
    out: Dict[str, Dict[str, float]] = {n: {} for n in models}
    for b in (1, 8):
        x = frames[np.arange(b) % len(frames)]
        runs = [
            (n, (lambda s=s: s.run(None, {s.get_inputs()[0].name: x}))) for n, s in sessions.items()
        ]
        for n, ips in _throughputs(runs, b, seconds * len(runs)).items():
            out[n][f"b{b}"] = round(ips, 2)
    return out


def run_study(
    arch: str,
    weights: str,
    work: Path,
    settings: Sequence[Int8Settings],
    threads: int = 2,
    accuracy: bool = True,
    seconds: float = 2.0,
    n_train: int = 100,
    n_test: int = 200,
    on_row=None,
) -> List[Dict[str, object]]:
    from dn2.export.int8config import quantize_with
    from dn2.export.pipeline import export_model
    from dn2.export.samples import sample_photos

    from .int8data import load_study_images

    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / f"{arch}-fp32.onnx"
    if not fp32.is_file():
        export_model(arch, weights, str(fp32), 224, "fp32", log=_log)
    if accuracy:
        data = load_study_images(224, n_train=n_train, n_test=n_test)
        images, sl = data.all(), data.slices()
    else:
        data, (_, images) = None, sample_photos(224)
        sl = {"photos": slice(0, len(images)), "fmnist_test": slice(0, 0)}
        sl.update({k: slice(0, 0) for k in ("textile_held", "textile_global", "textile_local")})
    _log(f"{len(images)} study images; load {os.getloadavg()}")
    ref = embed(str(fp32), images, {}, threads)
    base = aurocs(ref, data, sl) if accuracy else {}
    calib = images[sl["photos"]]
    rows: List[Dict[str, object]] = [
        {"setting": "fp32", "kernels": "-", **{f"auroc_{k}": round(v, 4) for k, v in base.items()}}
    ]
    for s in settings:
        path = work / f"{arch}-{s.label()}.onnx"
        quantize_with(str(fp32), str(path), calib, s, work)
        models = {"fp32": (str(fp32), {})}
        for kernels, config in (("default", {}), ("exact", EXACT)):
            out = embed(str(path), images, config, threads)
            row = {"setting": s.label(), "kernels": kernels, **agreement(ref, out, sl)}
            if accuracy:
                d = aurocs(out, data, sl)
                row.update({f"d_{k}_pts": 100 * (v - base[k]) for k, v in d.items()})
            rows.append(row)
            models[kernels] = (str(path), config)
        # speed: this setting's two kernel sets against fp32, interleaved in one timing
        sp = speeds(models, calib, threads, seconds)
        for row in rows[-2:]:
            for b, v in sp[row["kernels"]].items():
                row[f"ips_{b}"], row[f"x_fp32_{b}"] = v, round(v / sp["fp32"][b], 3)
            _log(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            )
        rows[0].setdefault("ips_runs", []).append(sp["fp32"])
        if on_row:
            on_row(rows)
    return rows


def format_table(rows: List[Dict[str, object]]) -> str:
    cols = [
        ("setting", "setting"),
        ("kernels", "kernels"),
        ("cos_min", "cos min"),
        ("cos_mean", "cos mean"),
        ("rank_gate", "rank (16 photos, gate)"),
        ("rank_textile", "rank textile"),
        ("rank_fmnist", "rank FMNIST"),
        ("d_fmnist_pts", "dAUC FMNIST pts"),
        ("d_textile_global_pts", "dAUC global pts"),
        ("d_textile_local_pts", "dAUC local pts"),
        ("ips_b1", "img/s b1"),
        ("ips_b8", "img/s b8"),
        ("x_fp32_b1", "x fp32 b1"),
        ("x_fp32_b8", "x fp32 b8"),
    ]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            cells.append(
                "-"
                if v is None
                else f"{v:.4f}"
                if isinstance(v, float) and "ips" not in key and "x_" not in key
                else f"{v}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.int8",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--work-dir", required=True, help="fp32 and quantized models (reused)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-accuracy", action="store_true", help="speed, cosine and rank only")
    p.add_argument("--settings", nargs="*", help="only these setting labels")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per model and batch")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    import platform

    load0 = os.getloadavg()
    pool = LITE_SETTINGS if "efficientnet" in args.arch else RESNET_SETTINGS
    by_label = {s.label(): s for s in pool}
    unknown = [x for x in args.settings or () if x not in by_label]
    if unknown:
        p.error(f"--settings {' '.join(unknown)}: unknown; known: {' '.join(by_label)}")
    settings = [by_label[x] for x in args.settings] if args.settings else list(pool)
    save = (
        (lambda rows: Path(args.json).write_text(json.dumps(rows, indent=2))) if args.json else None
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"flags {' '.join(int8_flags()) or '-'}; load avg at start {[round(x, 2) for x in load0]}"
    )
    rows = run_study(
        args.arch,
        args.weights,
        Path(args.work_dir),
        settings,
        args.threads,
        not args.no_accuracy,
        args.seconds,
        on_row=save,
    )
    for r in rows:
        print(json.dumps(r))
    print(
        f"{args.arch} weights={args.weights}, {args.threads} threads; load avg at end "
        f"{[round(x, 2) for x in os.getloadavg()]}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
