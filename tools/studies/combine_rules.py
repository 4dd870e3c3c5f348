"""Mode ``both``: every combination rule measured from one fitted bundle and one evaluation.

A ``both`` bundle keeps the held-out normal calibration scores of both signals, one pair per
calibrated image (``signals.calibration_pairs``); ``python -m dn2.tools.eval.folder ... --json
R.json`` keeps each test image's raw global and patch score. From those two, each rule of
``dn2.runtime.combine`` is fitted again on the normal pairs only, its threshold is the
conformal quantile of the combined pairs at the bundle's fpr, and the rule is scored on the
test images: image ROC-AUC per defect type, FPR on test/good and TPR per type at the threshold.
No re-embedding: one fit + one evaluation gives every rule.

``--sweep W ...`` adds the trade-off between the two signals: Fisher's rule with weight W on
the global signal's log tail and 1 - W on the patch one (``fisher`` is W = 0.5). Reading the
test anomalies to pick W would be fitting on anomalies; the rows show how far *any* weighting
of these two scores can go, not a rule to use.

    python -m dn2.tools.studies.combine_rules BUNDLE R.json [BUNDLE2 R2.json ...] [--json OUT]
        [--sweep 0.3 0.7]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np


def rules_table(bundle_dir, results: List[Dict], sweep=(), extra=None) -> Dict:
    """Every rule's row; ``extra`` maps more column names to ``fit(gc, pc) -> score(g, p)``
    (candidate rules of a study), each fitted on the same normal pairs."""
    from dn2.runtime.bundle import load_bundle
    from dn2.runtime.combine import RULES, _log_tail, apply_rule, fit_rule
    from dn2.runtime.threshold import conformal_quantile, roc_auc

    m = load_bundle(bundle_dir).manifest
    sig = m.signals
    pairs = sig.calibration_pairs if sig is not None else None
    if pairs is None:
        raise ValueError("bundle has no calibration pairs: expected a mode-both bundle")
    gc, pc = np.asarray(pairs["global"]), np.asarray(pairs["patch"])
    fpr = float(m.threshold.fpr)
    tg, tp = float(sig.glob.threshold.value), float(sig.patch.threshold.value)
    kinds = sorted({r["type"] for r in results})
    by = {
        k: (
            np.asarray([r["global_score"] for r in results if r["type"] == k]),
            np.asarray([r["patch_score"] for r in results if r["type"] == k]),
        )
        for k in kinds
    }
    out: Dict = {"fpr_target": fpr, "calibration_pairs": int(len(gc)), "rules": {}}
    columns = {"global": lambda g, p: g, "patch": lambda g, p: p}
    for rule in RULES:
        params = fit_rule(rule, gc, pc, tg, tp)
        columns[rule] = lambda g, p, params=params: apply_rule(params, g, p)
    z = fit_rule("fisher", gc, pc, tg, tp)
    for w in sweep:

        def weighted(g, p, w=float(w), z=z):
            zg = (np.asarray(g, np.float64) - z["global"]["mean"]) / z["global"]["std"]
            zp = (np.asarray(p, np.float64) - z["patch"]["mean"]) / z["patch"]["std"]
            return -2.0 * (w * _log_tail(zg) + (1.0 - w) * _log_tail(zp))

        columns[f"fisher w={w:g}"] = weighted
    for name, fit in (extra or {}).items():
        columns[name] = fit(gc, pc)
    for name, fn in columns.items():
        thr = conformal_quantile(fn(gc, pc), fpr)["value"]
        s = {k: fn(*by[k]) for k in kinds}
        defects = [k for k in kinds if k != "good"]
        row = {f"auroc_{k}": roc_auc(s["good"], s[k]) for k in defects}
        if len(defects) > 1:
            row["auroc_all"] = roc_auc(s["good"], np.concatenate([s[k] for k in defects]))
        row["fpr_good"] = float(np.mean(s["good"] > thr))
        row.update({f"tpr_{k}": float(np.mean(s[k] > thr)) for k in defects})
        out["rules"][name] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.combine_rules",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pairs", nargs="+", help="BUNDLE RESULTS.json [BUNDLE RESULTS.json ...]")
    p.add_argument("--json")
    p.add_argument("--sweep", type=float, nargs="*", default=(), metavar="W")
    a = p.parse_args(argv)
    if len(a.pairs) % 2:
        print("combine_rules: error: expected BUNDLE RESULTS.json pairs", file=sys.stderr)
        return 2
    out = {}
    for b, r in zip(a.pairs[::2], a.pairs[1::2]):
        res = json.loads(Path(r).read_text())["results"]
        try:
            t = rules_table(b, res, a.sweep)
        except ValueError as exc:
            print(f"combine_rules: error: {b}: {exc}", file=sys.stderr)
            return 2
        out[r] = t
        cols = list(next(iter(t["rules"].values())))
        print(f"{r} (fpr target {t['fpr_target']}, {t['calibration_pairs']} calibration pairs)")
        print("| rule | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for name, row in t["rules"].items():
            print(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
