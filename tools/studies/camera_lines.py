"""The camera study's saved lines, read back: totals, per-defect scores, other thresholds.

    python -m dn2.tools.studies.camera --model lite0.onnx --json c.json --save lines/ ...
    python -m dn2.tools.studies.camera_lines lines/ [--min-consecutive 3]
        [--fpr 0.01,0.02] [--defects lossless,MJPG --bundle default]

``--save`` writes one ``.npz`` per line (condition, seed): every bundle's per-frame scores,
its threshold and the largest calibration scores it stored (``threshold.scores``, what ``dn2
threshold --fpr`` re-thresholds from), the defects' ground truth and which frames show a
piece at rest. This module rebuilds the study's table from those files (the lines of a run
stopped for time count too), re-thresholds every bundle at other ``--fpr`` values without
re-embedding (the same rule as ``dn2 threshold``), and compares the defect pieces of two
conditions piece by piece (the lines of one seed carry the same pieces in every condition):
each defect's *sustained peak* — the highest level that ``--min-consecutive`` frames in a row
of its window exceed, so the defect is found when that is above the threshold — over the
threshold, in both conditions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

TRUTH = ("piece", "start", "end", "visible_start", "visible_end")


def alerts(scores, threshold: float, min_consecutive: int):
    from dn2.runtime.watch.decide import Decider

    from ..demo.verdict import Alert

    d, out, start = Decider(threshold, min_consecutive), [], None
    for i, s in enumerate(scores):
        t = d.update(float(s), i, i / 10.0)
        if t is not None and t.kind == "start":
            start = t.first_frame
        elif t is not None and t.kind == "end":
            out.append(Alert(start, i))
            start = None
    if start is not None:
        out.append(Alert(start, None))
    return out


def at_rest_run(above: np.ndarray, rest: np.ndarray, lo: int, hi: int, n: int) -> bool:
    """Whether frames lo..hi hold ``n`` consecutive above-threshold frames of a piece at rest
    (no join in view): such a false alert is the piece's doing, not the join's."""
    run = 0
    for t in range(lo, hi + 1):
        run = run + 1 if above[t] and rest[t] else 0
        if run >= n:
            return True
    return False


def line_stats(s: np.ndarray, threshold: float, truth, rest: np.ndarray, mc: int) -> Dict:
    """One line's counts for one bundle: false alerts (and how many a piece at rest opened),
    defects found / injected (the demo's verdict rule), normal frames above the threshold and
    the median normal score / threshold (frames outside every defect's visible run)."""
    from ..demo.verdict import judge

    in_defect = np.zeros(len(s), bool)
    for r in truth:
        in_defect[r["visible_start"] : r["visible_end"] + 1] = True
    above = s > threshold
    v = judge(truth, alerts(s, threshold, mc), n_frames=len(s))
    piece = sum(
        at_rest_run(above, rest, a, len(s) - 1 if b is None else b, mc)
        for a, b in v.false_alert_frames
    )
    return dict(
        frames=len(s),
        false=v.false_alerts,
        piece=int(piece),
        found=v.found,
        injected=v.injected,
        found_by=v.found_by,
        above=float(np.mean(above[~in_defect])),
        med=float(np.median(s[~in_defect]) / threshold),
    )


def add_line(totals: Dict, key, v: Dict) -> None:
    t = totals.setdefault(
        key, dict(frames=0, false=[], piece=0, found=[], injected=0, above=[], med=[])
    )
    t["frames"] += v["frames"]
    t["false"].append(v["false"])
    t["piece"] += v["piece"]
    t["found"].append(v["found"])
    t["injected"] += v["injected"]
    t["above"].append(v["above"])
    t["med"].append(v["med"])


def rows_of(totals: Dict, labels: Dict[str, str]) -> List[Dict]:
    """The printed rows: totals over the lines of each (condition, bundle, min consecutive),
    with the per-line (per-seed) false alerts and defects found; ``labels``: bundle names."""
    rows = []
    for (name, key, mc), t in totals.items():
        n_false, found = int(sum(t["false"])), int(sum(t["found"]))
        rows.append(
            {
                "condition": name,
                "bundle": labels.get(key, key),
                "key": key,
                "min_consecutive": mc,
                "frames": t["frames"],
                "lines": len(t["false"]),
                "false_alerts": n_false,
                "false_per_seed": t["false"],
                "false_at_rest": t["piece"],
                "false_per_1000": round(1000.0 * n_false / t["frames"], 2),
                "found": found,
                "found_per_seed": t["found"],
                "injected": t["injected"],
                "recall": round(found / max(t["injected"], 1), 4),
                "normal_frames_above": round(float(np.mean(t["above"])), 4),
                "median_normal_x_threshold": round(float(np.mean(t["med"])), 3),
            }
        )
    return rows


def table(res: Dict) -> str:
    lines = [
        "| condition | bundle | min consecutive | false alerts / frames (per 1000; at rest) "
        "| false per line | recall | found per line | normal frames above "
        "| median normal score / threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['condition']} | {r['bundle']} | {r['min_consecutive']} | "
            f"{r['false_alerts']} / {r['frames']} ({r['false_per_1000']}; "
            f"{r['false_at_rest']}) | {'+'.join(map(str, r['false_per_seed']))} | "
            f"{r['found']}/{r['injected']} ({r['recall']:.0%}) | "
            f"{'+'.join(map(str, r['found_per_seed']))} | "
            f"{r['normal_frames_above']:.1%} | {r['median_normal_x_threshold']} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def save_line(folder: Path, name: str, seed: int, scores: Dict, dets: Dict, truth, rest) -> Path:
    """One line's per-frame scores of every bundle (+ thresholds, stored calibration tails,
    ground truth, at-rest frames) as ``folder/NAME-seedS.npz`` (no pickles: plain arrays)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"rest": np.asarray(rest, bool)}
    for f in TRUTH:
        arrays[f"truth_{f}"] = np.asarray([int(r[f]) for r in truth], np.int64)
    arrays["truth_source"] = np.asarray([str(Path(r["source"]).name) for r in truth])
    for key, s in scores.items():
        th = dets[key].manifest.threshold
        arrays[f"score_{key}"] = np.asarray(s, np.float32)
        arrays[f"threshold_{key}"] = np.float64(dets[key].threshold)
        if th.scores is not None:
            tail = th.scores.to_dict()
            arrays[f"calib_{key}"] = np.asarray(tail["tail"], np.float64)
            arrays[f"calibn_{key}"] = np.int64(tail["n"])
    out = folder / f"{name}-seed{int(seed)}.npz"
    np.savez_compressed(out, **arrays)
    return out


def load_lines(folder: Path) -> Iterator[Tuple[str, int, Dict]]:
    """(condition, seed, line) for every saved line, in name order."""
    for p in sorted(Path(folder).glob("*-seed*.npz")):
        name, seed = p.stem.rsplit("-seed", 1)
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        truth = [
            dict({f: int(d[f"truth_{f}"][i]) for f in TRUTH}, source=str(d["truth_source"][i]))
            for i in range(len(d["truth_piece"]))
        ]
        keys = [k[len("score_") :] for k in d if k.startswith("score_")]
        line = {
            "truth": truth,
            "rest": d["rest"],
            "scores": {k: d[f"score_{k}"] for k in keys},
            "threshold": {k: float(d[f"threshold_{k}"]) for k in keys},
            "calib": {
                k: {"n": int(d[f"calibn_{k}"]), "tail": d[f"calib_{k}"].tolist()}
                for k in keys
                if f"calib_{k}" in d
            },
        }
        yield name, int(seed), line


def threshold_at(line: Dict, key: str, fpr: Optional[float]) -> float:
    """The bundle's own threshold (``fpr`` None) or the one ``dn2 threshold --fpr`` gives."""
    if fpr is None:
        return line["threshold"][key]
    from dn2.runtime.threshold import rethreshold

    return rethreshold(line["calib"][key], fpr)["value"]


def summarize(folder: Path, mcs: List[int], fprs: List[Optional[float]]) -> Dict:
    """The study's rows from the saved lines, for each bundle at each ``fprs`` entry (None:
    the bundle's own threshold)."""
    from .camera import BUNDLES

    totals: Dict = {}
    seeds = set()
    for name, seed, line in load_lines(folder):
        seeds.add(seed)
        for key, s in line["scores"].items():
            for fpr in fprs:
                label = key if fpr is None else f"{key}@fpr{fpr:g}"
                thr = threshold_at(line, key, fpr)
                for mc in mcs:
                    v = line_stats(s, thr, line["truth"], line["rest"], mc)
                    add_line(totals, (name, label, mc), v)
    rows = rows_of(totals, {k: v[0] for k, v in BUNDLES.items()})
    for r in rows:
        base, _, fpr = r["key"].partition("@fpr")
        if fpr:
            r["bundle"] = f"{BUNDLES.get(base, (base,))[0]}, dn2 threshold --fpr {fpr}"
    return {"seeds": sorted(seeds), "rows": rows}


def sustained_peak(s: np.ndarray, lo: int, hi: int, mc: int) -> float:
    """max over t in [lo, hi] of min(s[t : t + mc]): the highest level ``mc`` frames in a
    row starting in the window all exceed."""
    hi = min(hi, len(s) - mc)
    if hi < lo:
        return float("nan")
    return float(max(np.min(s[t : t + mc]) for t in range(lo, hi + 1)))


def per_defect(folder: Path, a: str, b: str, key: str, mc: int, slack: Optional[int] = None):
    """Each defect piece of conditions ``a`` and ``b`` (same seed, same piece): its sustained
    peak / threshold in both, in the verdict's window (visible start .. end + slack)."""
    from ..demo.verdict import DEFAULT_SLACK

    slack = DEFAULT_SLACK if slack is None else slack
    lines = {(n, sd): ln for n, sd, ln in load_lines(folder) if n in (a, b)}
    out = []
    for sd in sorted({sd for _, sd in lines}):
        if (a, sd) not in lines or (b, sd) not in lines:
            continue
        la, lb = lines[(a, sd)], lines[(b, sd)]
        for da, db in zip(la["truth"], lb["truth"]):
            assert da["source"] == db["source"], "lines of one seed carry the same pieces"
            lo, hi = da["visible_start"], da["end"] + slack
            pa = sustained_peak(la["scores"][key], lo, hi, mc) / la["threshold"][key]
            pb = sustained_peak(lb["scores"][key], lo, hi, mc) / lb["threshold"][key]
            out.append(dict(seed=sd, source=da["source"], a=round(pa, 3), b=round(pb, 3)))
    return out


def defect_report(rows: List[Dict], a: str, b: str) -> str:
    """Counts of found / missed in each condition, and how near the threshold the changes are."""
    fa = [r for r in rows if r["a"] > 1.0]
    fb = [r for r in rows if r["b"] > 1.0]
    lost = [r for r in rows if r["a"] > 1.0 >= r["b"]]
    won = [r for r in rows if r["b"] > 1.0 >= r["a"]]
    ratio = np.asarray([r["b"] / r["a"] for r in rows if r["a"] > 0])
    lines = [
        f"{len(rows)} defects; sustained peak / threshold above 1: {a} {len(fa)}, {b} {len(fb)}",
        f"found in {a}, not in {b}: {len(lost)}; found in {b}, not in {a}: {len(won)}",
        f"{b} / {a} peak ratio per defect: median {np.median(ratio):.3f}, "
        f"10-90 % {np.percentile(ratio, 10):.3f} - {np.percentile(ratio, 90):.3f}",
        f"{a} peaks of the lost ones: " + ", ".join(f"{r['a']:.3f}" for r in lost),
        f"{b} peaks of the lost ones: " + ", ".join(f"{r['b']:.3f}" for r in lost),
        f"{a} peaks of the won ones: " + ", ".join(f"{r['a']:.3f}" for r in won),
        f"{b} peaks of the won ones: " + ", ".join(f"{r['b']:.3f}" for r in won),
        f"defects within 10 % of the threshold ({a}): "
        f"{sum(0.9 < r['a'] <= 1.1 for r in rows)}, ({b}): {sum(0.9 < r['b'] <= 1.1 for r in rows)}",
    ]
    return "\n".join(lines)


def _fprs(text: str) -> List[Optional[float]]:
    return [None] + [float(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.camera_lines", description=__doc__.splitlines()[0]
    )
    p.add_argument("folder", type=Path)
    p.add_argument("--min-consecutive", type=_ints, default=[3])
    p.add_argument("--fpr", type=_fprs, default=[None], help="other fpr values, e.g. 0.02")
    p.add_argument("--defects", help="two conditions to compare piece by piece: lossless,MJPG")
    p.add_argument("--bundle", default="default", help="the bundle of --defects")
    p.add_argument("--json", type=Path, help="write the rows (and per-defect rows) here")
    a = p.parse_args(argv)
    if not list(Path(a.folder).glob("*-seed*.npz")):
        p.error(f"{a.folder}: expected the .npz lines of camera --save, found none")
    res = summarize(a.folder, a.min_consecutive, a.fpr)
    print(f"lines: seeds {res['seeds']}")
    print(table(res))
    if a.defects:
        ca, _, cb = a.defects.partition(",")
        rows = per_defect(a.folder, ca, cb, a.bundle, a.min_consecutive[0])
        res["defects"] = rows
        print(f"\nper defect, {a.bundle}, {ca} vs {cb}, min consecutive {a.min_consecutive[0]}:")
        print(defect_report(rows, ca, cb))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
