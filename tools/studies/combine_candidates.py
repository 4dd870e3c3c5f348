"""Mode ``both``: candidate combination rules beyond ``dn2.runtime.combine``'s, on several sets.

Every candidate is fitted on a bundle's held-out normal score pairs only
(``signals.calibration_pairs``) and scored on the raw test scores of an evaluation run, the
inputs of ``combine_rules``; its threshold is the conformal quantile of the combined pairs at
the bundle's fpr. The runtime's rules come first (``combine_rules.rules_table``), then:

* ``white p|g`` / ``white g|p``: Fisher of one z and the other's whitened residual,
  (z_p - rho z_g) / sqrt(1 - rho^2) (or the other way round), rho the pairs' correlation;
* ``white zca``: Fisher of the two ZCA-whitened z's;
* ``maha+``: one-sided Mahalanobis distance, max(z, 0)' R^-1 max(z, 0);
* ``conformal``: Fisher of each signal's conformal p-value, (1 + #{pairs >= s}) / (n + 1),
  continued past the largest pair by the Gaussian tail's ratio (so ranks do not tie there);
* ``log-z fisher``: Fisher of the z's of log scores;
* ``w=F``: Fisher with the patch term weighted by F(rho) (``cfisher`` is (1 - rho)^2).

(Brown's correction of Fisher for correlated p-values changes the statistic's null
distribution, not its order, so with a conformal threshold it equals ``fisher``: not listed.)

    python -m dn2.tools.studies.combine_candidates --set NAME BUNDLE R.json [--set ...]
        [--fmnist NAME DIR ...] [--weights W ...] [--json OUT]

``--weights W ...`` adds Fisher with a constant weight W on the patch term (a sweep read on
the anomalies, not a rule). Each set's pair correlation rho is printed first.

``--fmnist NAME DIR``: a ``fmnist_modes --keep DIR`` folder; its columns are the mean over the
classes of the image ROC-AUC, the standard error of the mean per-class difference from the
global signal (paired: the same images), and the mean FPR on each class's normal test images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np

Fit = Callable[[np.ndarray, np.ndarray], Callable]


def _z(gc, pc):
    mg, sg = float(np.mean(gc)), float(np.std(gc, ddof=1))
    mp, sp = float(np.mean(pc)), float(np.std(pc, ddof=1))
    rho = float(np.corrcoef(gc, pc)[0, 1])

    def z(g, p):
        return (np.asarray(g, np.float64) - mg) / sg, (np.asarray(p, np.float64) - mp) / sp

    return z, rho


def _tail(x):
    from dn2.runtime.combine import _log_tail

    return _log_tail(np.asarray(x, np.float64))


def white(which: str) -> Fit:
    def fit(gc, pc):
        z, rho = _z(gc, pc)
        rho = min(rho, 0.999)
        if which == "zca":
            w, v = np.linalg.eigh(np.array([[1.0, rho], [rho, 1.0]]))
            m = v @ np.diag(w**-0.5) @ v.T

            def score(g, p):
                u = m @ np.vstack(z(g, p))
                return -2.0 * (_tail(u[0]) + _tail(u[1]))

            return score

        def score(g, p):
            a, b = z(g, p)
            if which == "g|p":
                a, b = b, a
            return -2.0 * (_tail(a) + _tail((b - rho * a) / np.sqrt(1.0 - rho * rho)))

        return score

    return fit


def maha_plus(gc, pc):
    z, rho = _z(gc, pc)
    inv = np.linalg.inv(np.array([[1.0, min(rho, 0.999)], [min(rho, 0.999), 1.0]]))

    def score(g, p):
        u = np.maximum(np.vstack(z(g, p)), 0.0)
        return np.einsum("in,ij,jn->n", u, inv, u)

    return score


def conformal(gc, pc):
    n = len(gc)
    cal = [np.sort(np.asarray(gc, np.float64)), np.sort(np.asarray(pc, np.float64))]
    stats = [(c.mean(), c.std(ddof=1)) for c in cal]

    def logp(s, c, m, sd):
        s = np.asarray(s, np.float64)
        above = n - np.searchsorted(c, s, side="left")
        past = (
            np.log(1.0 / (n + 1)) + _tail((s - m) / sd) - _tail(np.full(s.shape, (c[-1] - m) / sd))
        )
        return np.where(
            above == 0, np.minimum(past, np.log(1.0 / (n + 1))), np.log((above + 1.0) / (n + 1))
        )

    def score(g, p):
        return -2.0 * (logp(g, cal[0], *stats[0]) + logp(p, cal[1], *stats[1]))

    return score


def log_fisher(gc, pc):
    z, _ = _z(np.log(gc), np.log(pc))
    return lambda g, p: -2.0 * sum(_tail(v) for v in z(np.log(g), np.log(p)))


def weighted(f: Callable[[float], float]) -> Fit:
    def fit(gc, pc):
        z, rho = _z(gc, pc)
        w = f(min(max(rho, 0.0), 1.0))

        def score(g, p):
            a, b = z(g, p)
            return -2.0 * (_tail(a) + w * _tail(b))

        return score

    return fit


CANDIDATES: Dict[str, Fit] = {
    "white p|g": white("p|g"),
    "white g|p": white("g|p"),
    "white zca": white("zca"),
    "maha+": maha_plus,
    "conformal": conformal,
    "log-z fisher": log_fisher,
    "w=1-rho": weighted(lambda r: 1.0 - r),
    "w=1-rho^2": weighted(lambda r: 1.0 - r * r),
    "w=(1-rho)/(1+rho)": weighted(lambda r: (1.0 - r) / (1.0 + r)),
    "w=(1-rho)^3": weighted(lambda r: (1.0 - r) ** 3),
}


def pair_rho(bundle) -> float:
    from dn2.runtime.bundle import load_bundle

    sig = load_bundle(bundle).manifest.signals
    pairs = sig.calibration_pairs if sig is not None else None
    if pairs is None:
        raise ValueError(f"{bundle}: no calibration pairs: expected a mode-both bundle")
    gc, pc = np.asarray(pairs["global"]), np.asarray(pairs["patch"])
    return float(np.corrcoef(gc, pc)[0, 1])


def set_columns(bundle, results_json, weights=()) -> Dict[str, Dict[str, float]]:
    from dn2.tools.studies.combine_rules import rules_table

    res = json.loads(Path(results_json).read_text())["results"]
    extra = dict(CANDIDATES)
    extra.update({f"w={w:g} (constant)": weighted(lambda r, w=float(w): w) for w in weights})
    rows = rules_table(bundle, res, extra=extra)["rules"]
    out = {}
    for name, row in rows.items():
        keep = {k[len("auroc_") :]: v for k, v in row.items() if k.startswith("auroc_")}
        keep["fpr"] = row["fpr_good"]
        out[name] = keep
    return out


def fmnist_columns(folder, weights=()) -> Dict[str, Dict[str, float]]:
    per = []
    for b in sorted(Path(folder).glob("class_*.json")):
        per.append(set_columns(b.with_suffix(""), b, weights))
    if not per:
        raise ValueError(f"{folder}: expected class_C.json + class_C/ of fmnist_modes --keep")
    out = {}
    for name in per[0]:
        auc = np.asarray([c[name]["other"] for c in per])
        diff = auc - np.asarray([c["global"]["other"] for c in per])
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        out[name] = {
            "mean": float(auc.mean()),
            "vs global": float(diff.mean()),
            "se": se,
            "fpr": float(np.mean([c[name]["fpr"] for c in per])),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.combine_candidates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--set", nargs=3, action="append", default=[], metavar=("NAME", "BUNDLE", "R"))
    p.add_argument("--fmnist", nargs=2, action="append", default=[], metavar=("NAME", "DIR"))
    p.add_argument("--weights", type=float, nargs="*", default=(), metavar="W")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not a.set and not a.fmnist:
        print("combine_candidates: error: expected --set or --fmnist", file=sys.stderr)
        return 2
    sets = {}
    try:
        for name, b, r in a.set:
            sets[name] = set_columns(b, r, a.weights)
            print(f"{name}: rho {pair_rho(b):.3f}")
        for name, d in a.fmnist:
            sets[name] = fmnist_columns(d, a.weights)
            rhos = [pair_rho(b) for b in sorted(Path(d).glob("class_*")) if b.is_dir()]
            print(f"{name}: rho per class " + " ".join(f"{r:.3f}" for r in rhos))
    except (ValueError, OSError) as exc:
        print(f"combine_candidates: error: {exc}", file=sys.stderr)
        return 2
    cols = [(s, k) for s, t in sets.items() for k in next(iter(t.values()))]
    print("| rule | " + " | ".join(f"{s} {k}" for s, k in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for rule in next(iter(sets.values())):
        print(f"| {rule} | " + " | ".join(f"{sets[s][rule][k]:.4f}" for s, k in cols) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(sets, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
