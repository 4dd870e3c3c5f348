"""Decision thresholds from scores; an image is anomalous when ``score > threshold``.

Methods (``--threshold-method``):

* ``fpr`` (default, normal data only): the conformal (1 - fpr) quantile of the leave-one-out
  scores of the normal training images: the ``ceil((n + 1)(1 - fpr))``-th smallest of n scores.
  For a new normal image exchangeable with the training ones, P(score > threshold) <= fpr. When
  n is too small for the target (n + 1 < 1 / fpr) the largest score is used and the manifest
  says ``"capped": true``.
* ``val-fpr``: the same quantile over the scores of ``--val-normal`` images.
* ``youden``: with ``--val-normal`` and ``--val-anomalous``: the threshold maximising
  TPR - FPR (Youden's J) on the validation scores.
* ``f1``: ditto, maximising F1 with anomalous as the positive class.

Every method that the given data allow is computed and recorded; the chosen one is applied.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from .errors import Dn2Error

METHODS = ("fpr", "val-fpr", "youden", "f1")
QUANTILES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)


def _scores(s, what: str) -> np.ndarray:
    a = np.asarray(s, dtype=np.float64).ravel()
    if a.size == 0:
        raise Dn2Error(f"{what}: expected at least one score, found none")
    if not np.isfinite(a).all():
        raise Dn2Error(f"{what}: expected finite scores, found NaN or inf")
    return a


def conformal_quantile(scores, fpr: float) -> Dict:
    """{'value', 'rank', 'n', 'capped'}: the ceil((n+1)(1-fpr))-th smallest score."""
    if not 0.0 < float(fpr) < 1.0:
        raise Dn2Error(f"fpr: expected a rate in (0, 1), found {fpr}", param="fpr")
    a = np.sort(_scores(scores, "calibration scores"))
    n = a.size
    rank = math.ceil((n + 1) * (1.0 - float(fpr)) - 1e-9)
    capped = rank > n
    rank = min(rank, n)
    out = {"value": float(a[rank - 1]), "rank": int(rank), "n": int(n), "capped": bool(capped)}
    if capped:
        out["needed"] = needed_for(fpr)
    return out


def needed_for(fpr: float) -> int:
    """The fewest calibration scores that resolve ``fpr`` (n + 1 >= 1 / fpr)."""
    return int(math.ceil(1.0 / float(fpr) - 1.0 - 1e-9))


def capped_warning(th: Dict, what: str = "normal images") -> Optional[str]:
    """The warning for a capped conformal threshold, or None."""
    c = th.get("candidates", {}).get("fpr", th)
    if not c.get("capped"):
        return None
    return (
        f"WARNING: a target false-positive rate of {th.get('fpr', 0):g} cannot be resolved "
        f"with {c['n']} calibration scores; the threshold is the largest of them, so the "
        f"real rate on new {what} can be as high as 1/{c['n'] + 1} = "
        f"{1.0 / (c['n'] + 1):.3g}. It takes at least {c.get('needed', '?')} {what} "
        f"(or a larger fpr)"
    )


TAIL = 10_000  # calibration scores kept in the manifest: the largest, for re-thresholding


def calibration_tail(scores) -> Dict:
    """{'n', 'tail'}: how many calibration scores there were and the largest ``TAIL`` of
    them, sorted; enough to recompute the conformal threshold of any fpr >= TAIL / n."""
    a = np.sort(_scores(scores, "calibration scores"))
    return {"n": int(a.size), "tail": [float(v) for v in a[-TAIL:]]}


def rethreshold(stored: Dict, fpr: float) -> Dict:
    """:func:`conformal_quantile` at ``fpr`` from a :func:`calibration_tail`."""
    if not 0.0 < float(fpr) < 1.0:
        raise Dn2Error(f"fpr: expected a rate in (0, 1), found {fpr}", param="fpr")
    n, tail = int(stored["n"]), np.asarray(stored["tail"], np.float64)
    rank = math.ceil((n + 1) * (1.0 - float(fpr)) - 1e-9)
    capped = rank > n
    rank = min(rank, n)
    pos = rank - 1 - (n - tail.size)  # index into the stored top scores
    if pos < 0:
        raise Dn2Error(
            f"fpr {fpr:g}: the bundle keeps the largest {tail.size} of {n} "
            f"calibration scores, enough for rates >= {tail.size / (n + 1):.3g}; "
            f"expected a larger fpr (or refit)",
            param="fpr",
        )
    out = {"value": float(tail[pos]), "rank": int(rank), "n": n, "capped": bool(capped)}
    if capped:
        out["needed"] = needed_for(fpr)
    return out


def quantile_table(scores) -> Dict[str, float]:
    a = _scores(scores, "calibration scores")
    return {f"{q:g}": float(np.quantile(a, q)) for q in QUANTILES}


def _sweep(normal: np.ndarray, anomalous: np.ndarray):
    """For each candidate threshold t (every distinct score; decision score > t):
    (t, tp, fp, fn, tn) arrays."""
    t = np.unique(np.concatenate([normal, anomalous]))
    fp = normal.size - np.searchsorted(np.sort(normal), t, side="right")
    tp = anomalous.size - np.searchsorted(np.sort(anomalous), t, side="right")
    return t, tp, fp, anomalous.size - tp, normal.size - fp


def roc_auc(normal, anomalous) -> float:
    """ROC-AUC of scores (higher = more anomalous): P(anomalous > normal), ties counting half,
    from average ranks (Mann-Whitney U / (n m))."""
    n = _scores(normal, "normal scores")
    a = _scores(anomalous, "anomalous scores")
    both = np.concatenate([n, a])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), np.float64)
    ranks[order] = np.arange(1, len(both) + 1, dtype=np.float64)
    _, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    if (counts > 1).any():  # average the ranks of tied scores
        ranks = (np.bincount(inv, ranks) / counts)[inv]
    u = ranks[len(n) :].sum() - len(a) * (len(a) + 1) / 2.0
    return float(u / (len(n) * len(a)))


def youden_threshold(normal, anomalous) -> Dict:
    n, a = _scores(normal, "val_normal scores"), _scores(anomalous, "val_anomalous scores")
    t, tp, fp, _, _ = _sweep(n, a)
    j = tp / a.size - fp / n.size
    i = int(np.argmax(j))
    return {
        "value": float(t[i]),
        "j": float(j[i]),
        "tpr": float(tp[i] / a.size),
        "fpr": float(fp[i] / n.size),
    }


def f1_threshold(normal, anomalous) -> Dict:
    n, a = _scores(normal, "val_normal scores"), _scores(anomalous, "val_anomalous scores")
    t, tp, fp, fn, _ = _sweep(n, a)
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    i = int(np.argmax(f1))
    return {
        "value": float(t[i]),
        "f1": float(f1[i]),
        "precision": float(tp[i] / max(tp[i] + fp[i], 1)),
        "recall": float(tp[i] / a.size),
    }


def calibrate(
    loo,
    fpr: float = 0.01,
    val_normal=None,
    val_anomalous=None,
    method: str = "fpr",
    calibration: str = "",
) -> Dict:
    """The manifest's ``threshold`` section: value, method, fpr, quantiles, candidates."""
    if method not in METHODS:
        raise Dn2Error(
            f"threshold_method: expected one of {METHODS}, found {method!r}",
            param="threshold_method",
        )
    cands: Dict[str, Dict] = {"fpr": conformal_quantile(loo, fpr)}
    has_n = val_normal is not None and len(val_normal) > 0
    has_a = val_anomalous is not None and len(val_anomalous) > 0
    if has_n:
        cands["val-fpr"] = conformal_quantile(val_normal, fpr)
    if has_n and has_a:
        cands["youden"] = youden_threshold(val_normal, val_anomalous)
        cands["f1"] = f1_threshold(val_normal, val_anomalous)
    if method not in cands:
        need = ("val_normal",) if method == "val-fpr" else ("val_normal", "val_anomalous")
        raise Dn2Error(
            f"threshold_method {method} needs scored {' and '.join(need)} images, "
            f"found {len(val_normal) if has_n else 0} normal and "
            f"{len(val_anomalous) if has_a else 0} anomalous",
            params=need + ("threshold_method",),
        )
    out = {
        "value": cands[method]["value"],
        "method": method,
        "fpr": float(fpr),
        "quantiles": quantile_table(loo),
        "calibration": calibration,
        "n_calibration": int(np.asarray(loo).size),
        "candidates": cands,
        "scores": calibration_tail(loo),
    }
    if has_n:
        out["val_normal_fpr"] = float(np.mean(np.asarray(val_normal) > out["value"]))
    if has_a:
        out["val_anomalous_tpr"] = float(np.mean(np.asarray(val_anomalous) > out["value"]))
    return out


def decide(scores, threshold: Optional[float]) -> np.ndarray:
    return np.asarray(scores) > float(threshold)
