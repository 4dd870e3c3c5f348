"""Localisation metrics: pixel ROC-AUC and PRO (per-region overlap, MVTec AD's AUPRO).

* pixel ROC-AUC: every pixel of every test image (normal images included, all pixels negative)
  scored by its map value against the ground-truth masks.
* PRO: for thresholds over the map values, the mean over ground-truth regions (8-connected
  components of each mask) of the fraction of the region over the threshold, as a function of
  the false-positive rate on normal pixels; integrated over FPR in [0, ``max_fpr``] (0.3, as in
  Bergmann et al. 2021) and divided by ``max_fpr`` (1 = perfect, a random map ~0.15).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from dn2.runtime.threshold import roc_auc

MAX_FPR = 0.3
N_THRESHOLDS = 200


def pixel_auc(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    max_pixels: int = 4_000_000,
    seed: int = 0,
) -> float:
    """ROC-AUC of map values, masks > 0 positive; subsampled to ``max_pixels`` (seeded)."""
    v = np.concatenate([m.ravel() for m in maps]).astype(np.float32)
    y = np.concatenate([(k > 0).ravel() for k in masks])
    if len(v) > max_pixels:
        idx = np.random.default_rng(seed).choice(len(v), max_pixels, replace=False)
        v, y = v[idx], y[idx]
    return roc_auc(v[~y], v[y])


def _regions(masks: Sequence[np.ndarray]) -> List[Tuple[int, np.ndarray]]:
    out = []
    for i, m in enumerate(masks):
        if not (m > 0).any():
            continue
        n, lab = cv2.connectedComponents((m > 0).astype(np.uint8), connectivity=8)
        out += [(i, np.flatnonzero(lab.ravel() == r)) for r in range(1, n)]
    return out


def pro_curve(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], n_thresholds: int = N_THRESHOLDS
) -> Tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) arrays, fpr ascending."""
    neg = np.concatenate([m.ravel()[(k <= 0).ravel()] for m, k in zip(maps, masks)])
    regions = _regions(masks)
    if not regions or not len(neg):
        return np.zeros(0), np.zeros(0)
    hi, lo = float(max(m.max() for m in maps)), float(min(m.min() for m in maps))
    ts = np.linspace(hi, lo, n_thresholds)
    neg_sorted = np.sort(neg)
    fpr = 1.0 - np.searchsorted(neg_sorted, ts, side="right") / len(neg_sorted)
    vals = [np.sort(maps[i].ravel()[idx]) for i, idx in regions]
    pro = np.array(
        [np.mean([1.0 - np.searchsorted(v, t, side="right") / len(v) for v in vals]) for t in ts]
    )
    return fpr, pro


def aupro(maps, masks, max_fpr: float = MAX_FPR) -> float:
    fpr, pro = pro_curve(maps, masks)
    if not len(fpr):
        return float("nan")
    keep = fpr <= max_fpr
    f, p = np.concatenate([[0.0], fpr[keep]]), np.concatenate([[0.0], pro[keep]])
    if f[-1] < max_fpr and (~keep).any():  # close the curve at max_fpr by interpolation
        j = int(np.argmax(~keep))
        f1, p1 = fpr[j], pro[j]
        f0, p0 = f[-1], p[-1]
        p_end = p0 + (p1 - p0) * (max_fpr - f0) / max(f1 - f0, 1e-12)
        f, p = np.append(f, max_fpr), np.append(p, p_end)
    return (
        float(np.trapezoid(p, f) / max_fpr)
        if hasattr(np, "trapezoid")
        else float(np.trapz(p, f) / max_fpr)
    )


def roc_points(normal, anomalous) -> Dict[str, np.ndarray]:
    """ROC curve points (fpr, tpr) for plotting, thresholds descending."""
    n, a = np.asarray(normal, np.float64), np.asarray(anomalous, np.float64)
    t = np.unique(np.concatenate([n, a]))[::-1]
    ns, as_ = np.sort(n), np.sort(a)
    fpr = 1 - np.searchsorted(ns, t, side="right") / len(ns)
    tpr = 1 - np.searchsorted(as_, t, side="right") / len(as_)
    return {"fpr": fpr, "tpr": tpr, "t": t}
