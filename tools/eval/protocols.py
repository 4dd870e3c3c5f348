"""The paper's evaluation protocols (section 4, Table 6), on precomputed embeddings.

Every protocol takes an :class:`Embeds` (train/test embeddings and labels) and returns a plain
dict: ``per_class`` (list of rows with ``auroc``), ``mean_auroc`` (the headline number of that
protocol, a fraction in [0, 1]), ``curves`` (sweeps: name -> {"x": [...], "y": [...]}) and, for
plotting only (not JSON), ``scores``: class -> (scores, is_anomalous).
Higher score = more anomalous; anomalies are the positive class of the ROC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from .scorer import clean, kmeans_centres, knn_scores, l2_normalize, pool_sets

FEW_SHOTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 6000)
IMPURITIES = (0.0, 0.05, 0.1, 0.15, 0.2)
K_SWEEP = (1, 2, 3, 5, 10, 20, 50)
KMEANS_C = (1, 3, 5, 10)  # paper Table 6
GROUP_M = (2, 3, 4, 5, 6, 7, 8)
POOLINGS = ("mean", "max", "concat")
CLEAN_FRACTION = 0.5  # paper 3.2: "in practice we remove 50% of training images"


@dataclass
class Embeds:
    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    classes: List[str]

    def normalized(self) -> Embeds:
        return Embeds(
            l2_normalize(self.train),
            self.train_labels,
            l2_normalize(self.test),
            self.test_labels,
            self.classes,
        )

    @property
    def present(self) -> List[int]:
        """Class indices that have both train and test items (subsample runs may drop some)."""
        tr, te = set(self.train_labels.tolist()), set(self.test_labels.tolist())
        return [c for c in range(len(self.classes)) if c in tr and c in te]


def auroc(scores: np.ndarray, anomalous: np.ndarray) -> float:
    if anomalous.all() or not anomalous.any():
        raise ValueError("ROC-AUC needs both normal and anomalous test items")
    return float(roc_auc_score(anomalous.astype(np.int8), scores))


def _row(e: Embeds, c: int, a: float, n_train: int, anomalous: np.ndarray) -> Dict:
    return {
        "class": c,
        "name": e.classes[c],
        "auroc": a,
        "n_train": int(n_train),
        "n_test_normal": int((~anomalous).sum()),
        "n_test_anomalous": int(anomalous.sum()),
    }


def _finish(rows: List[Dict], scores=None, curves=None, **extra) -> Dict:
    out = {
        "per_class": rows,
        "mean_auroc": float(np.mean([r["auroc"] for r in rows])),
        "curves": curves or {},
        "scores": scores or {},
    }
    out.update(extra)
    return out


def one_class(e: Embeds, k: int = 2, keep_scores: bool = True) -> Dict:
    """Paper 4.1: each class normal in turn (its train items are the bank), all test scored."""
    rows, scores = [], {}
    for c in e.present:
        bank = e.train[e.train_labels == c]
        s = knn_scores(bank, e.test, k)
        anom = e.test_labels != c
        rows.append(_row(e, c, auroc(s, anom), len(bank), anom))
        if keep_scores:
            scores[c] = (s, anom)
    return _finish(rows, scores, headline=f"one-class, k={k}")


def multimodal(e: Embeds, k: int = 2) -> Dict:
    """Paper 4.2: all classes normal but one, which is the anomaly; no class labels in the bank."""
    rows, scores = [], {}
    for c in e.present:
        bank = e.train[e.train_labels != c]
        s = knn_scores(bank, e.test, k)
        anom = e.test_labels == c
        rows.append(_row(e, c, auroc(s, anom), len(bank), anom))
        scores[c] = (s, anom)
    return _finish(rows, scores, headline=f"multimodal (all classes but one normal), k={k}")


def few_shot(
    e: Embeds, k: int = 2, shots: Sequence[int] = FEW_SHOTS, repeats: int = 3, seed: int = 0
) -> Dict:
    """Paper 4.3 / Fig. 5: n random training images per class; mean over ``repeats`` draws.
    The headline ``mean_auroc`` (and ``per_class``) is the largest n."""
    rng = np.random.default_rng(seed)
    pools = {c: np.flatnonzero(e.train_labels == c) for c in e.present}
    largest = min(len(p) for p in pools.values())
    ns = sorted({min(n, largest) for n in shots})
    curve, per_n = [], {}
    for n in ns:
        rows = []
        for c in e.present:
            anom = e.test_labels != c
            reps = 1 if n >= len(pools[c]) else repeats
            vals = [
                auroc(knn_scores(e.train[rng.choice(pools[c], n, replace=False)], e.test, k), anom)
                for _ in range(reps)
            ]
            rows.append(_row(e, c, float(np.mean(vals)), n, anom))
        per_n[n] = rows
        curve.append(float(np.mean([r["auroc"] for r in rows])))
    return _finish(
        per_n[ns[-1]],
        curves={"few-shot": {"x": ns, "y": curve}},
        headline=f"{ns[-1]} training images per class, k={k}",
        xlabel="training images per class",
        by_n={str(n): float(v) for n, v in zip(ns, curve)},
    )


def _impure_bank(e: Embeds, c: int, ratio: float, rng) -> tuple:
    normal = np.flatnonzero(e.train_labels == c)
    others = np.flatnonzero(e.train_labels != c)
    n_anom = int(round(ratio / (1.0 - ratio) * len(normal))) if ratio > 0 else 0
    n_anom = min(n_anom, len(others))
    idx = np.concatenate([normal, rng.choice(others, n_anom, replace=False)])
    is_anom = np.r_[np.zeros(len(normal), bool), np.ones(n_anom, bool)]
    return e.train[idx], is_anom


def impurity(
    e: Embeds,
    k: int = 2,
    ratios: Sequence[float] = IMPURITIES,
    clean_fraction: float = CLEAN_FRACTION,
    seed: int = 0,
    clean_k: Optional[int] = None,
) -> Dict:
    """Paper 4.4 / Fig. 5 right: a fraction ``ratio`` of the training set is anomalies (train
    items of the other classes); scored with and without the cleaning stage. Headline: the
    largest ratio with cleaning. ``anomalies_left`` is the fraction of planted anomalies that
    survived cleaning (mean over classes). ``clean_k``: neighbours of the leave-one-out
    cleaning score (default ``k``, as the paper); scoring always uses ``k``."""
    ck = int(clean_k or k)
    rng = np.random.default_rng(seed)
    raw, cleaned, left = [], [], []
    rows_last = []
    for r in ratios:
        a_raw, a_cln, a_left, rows = [], [], [], []
        for c in e.present:
            bank, is_anom = _impure_bank(e, c, r, rng)
            anom = e.test_labels != c
            a_raw.append(auroc(knn_scores(bank, e.test, k), anom))
            keep = clean(bank, clean_fraction, ck)
            a_cln.append(auroc(knn_scores(bank[keep], e.test, k), anom))
            if is_anom.any():
                a_left.append(float(is_anom[keep].sum() / is_anom.sum()))
            rows.append(
                dict(
                    _row(e, c, a_cln[-1], len(bank), anom),
                    auroc_no_clean=a_raw[-1],
                    n_planted=int(is_anom.sum()),
                    n_kept=int(len(keep)),
                )
            )
        raw.append(float(np.mean(a_raw)))
        cleaned.append(float(np.mean(a_cln)))
        left.append(float(np.mean(a_left)) if a_left else 0.0)
        rows_last = rows
    xs = [float(r) for r in ratios]
    return _finish(
        rows_last,
        headline=f"impurity {ratios[-1]:.2f}, cleaning "
        f"{clean_fraction:.0%} (column auroc_no_clean: without), k={k}, "
        f"cleaning k={ck}",
        xlabel="fraction of anomalies in the training set",
        curves={
            "no cleaning": {"x": xs, "y": raw},
            f"cleaning {clean_fraction:.0%} (k={ck})": {"x": xs, "y": cleaned},
        },
        by_ratio=[
            {"ratio": x, "auroc_no_clean": a, "auroc_clean": b, "anomalies_left": f}
            for x, a, b, f in zip(xs, raw, cleaned, left)
        ],
    )


def k_sweep(e: Embeds, ks: Sequence[int] = K_SWEEP, k: int = 2) -> Dict:
    """Paper Fig. 2: one-class mean ROC-AUC against the number of neighbours. Headline: ``k``."""
    by_k, rows_at_k = {}, None
    for kk in sorted(set(ks) | {k}):
        res = one_class(e, kk, keep_scores=False)
        by_k[kk] = res["mean_auroc"]
        if kk == k:
            rows_at_k = res["per_class"]
    xs = sorted(by_k)
    return _finish(
        rows_at_k,
        headline=f"one-class, k={k}",
        xlabel="k (neighbours)",
        curves={"k sweep": {"x": xs, "y": [by_k[x] for x in xs]}},
        by_k={str(x): by_k[x] for x in xs},
    )


def kmeans_sweep(e: Embeds, cs: Sequence[int] = KMEANS_C, k: int = 2, seed: int = 0) -> Dict:
    """Paper 5.1 / Table 6: the bank replaced by C k-means centres of the normal train set
    (k nearest centres, k capped at C) vs the full bank. Headline: the full bank."""
    full = one_class(e, k, keep_scores=False)
    table = {}
    for cc in cs:
        vals = []
        for c in e.present:
            centres = kmeans_centres(e.train[e.train_labels == c], cc, seed=seed)
            vals.append(auroc(knn_scores(centres, e.test, k), e.test_labels != c))
        table[f"C={cc}"] = float(np.mean(vals))
    table["kNN"] = full["mean_auroc"]
    curve = {"x": list(cs), "y": [table[f"C={c}"] for c in cs]}
    return _finish(
        full["per_class"],
        headline=f"full bank (kNN), k={k}",
        xlabel="C (k-means centres per normal class)",
        curves={"k-means": curve},
        table=table,
    )


# ----------------------------------------------------------------------------- group (4.5)
def _one_of_each(rng, pools: List[np.ndarray], n_sets: int) -> np.ndarray:
    """[n_sets, M] item indices: one item of each class per set, in a random order."""
    sets = np.stack([rng.choice(p, n_sets) for p in pools], axis=1)
    for row in sets:
        rng.shuffle(row)
    return sets


def _random_draws(rng, pools: List[np.ndarray], labels: np.ndarray, n_sets: int) -> np.ndarray:
    """[n_sets, M] items drawn at random from the union of the M classes, keeping only draws
    that are NOT one of each class (those would be normal sets by definition)."""
    union, m, out = np.concatenate(pools), len(pools), []
    while len(out) < n_sets:
        s = rng.choice(union, m, replace=False)
        if len(np.unique(labels[s])) < m:
            out.append(s)
    return np.stack(out)


def group(
    e: Embeds,
    k: int = 2,
    ms: Sequence[int] = GROUP_M,
    n_train_sets: int = 1000,
    n_test_sets: int = 500,
    poolings: Sequence[str] = POOLINGS,
    seed: int = 0,
) -> Dict:
    """Paper 4.5 / Fig. 4 on this dataset's classes: a normal set holds one image of each of
    classes 0..M-1; an anomalous set holds M random images of those classes that are not one of
    each. Bank: ``n_train_sets`` normal sets of train images; test: ``n_test_sets`` normal and
    ``n_test_sets`` anomalous sets of test images. Headline: mean pooling at the largest M."""
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown:
        raise ValueError(f"pooling expected one of {POOLINGS}, found {unknown}")
    rng = np.random.default_rng(seed)
    ms = [m for m in ms if m <= len(e.present)]
    if not ms:
        raise ValueError(f"group protocol needs at least 2 classes, found {len(e.present)}")
    curves = {p: {"x": list(ms), "y": []} for p in poolings}
    rows = []
    for m in ms:
        cls = e.present[:m]
        tr_pools = [np.flatnonzero(e.train_labels == c) for c in cls]
        te_pools = [np.flatnonzero(e.test_labels == c) for c in cls]
        train_sets = _one_of_each(rng, tr_pools, n_train_sets)
        test_sets = np.concatenate(
            [
                _one_of_each(rng, te_pools, n_test_sets),
                _random_draws(rng, te_pools, e.test_labels, n_test_sets),
            ]
        )
        anom = np.r_[np.zeros(n_test_sets, bool), np.ones(n_test_sets, bool)]
        row = {"M": m, "classes": [e.classes[c] for c in cls]}
        for p in poolings:
            s = knn_scores(pool_sets(e.train, train_sets, p), pool_sets(e.test, test_sets, p), k)
            row[p] = auroc(s, anom)
            curves[p]["y"].append(row[p])
        rows.append(row)
    head = poolings[0] if "mean" not in poolings else "mean"
    return {
        "per_M": rows,
        "per_class": [],
        "mean_auroc": rows[-1][head],
        "curves": curves,
        "scores": {},
        "headline": f"{head} pooling, M={ms[-1]}, k={k}",
        "xlabel": "M (images per set)",
    }


def int8_delta(fp32: Embeds, int8: Embeds, k: int = 2) -> Dict:
    """One-class ROC-AUC of the int8 model minus the fp32 model, per class and mean (points of
    a fraction; x100 for percentage points). Headline ``mean_auroc``: the int8 model's."""
    a, b = one_class(fp32, k), one_class(int8, k)
    rows = [
        dict(rb, auroc_fp32=ra["auroc"], delta=rb["auroc"] - ra["auroc"])
        for ra, rb in zip(a["per_class"], b["per_class"])
    ]
    return _finish(
        rows,
        b["scores"],
        headline=f"one-class, int8 model, k={k}",
        mean_auroc_fp32=a["mean_auroc"],
        delta=b["mean_auroc"] - a["mean_auroc"],
    )


PROTOCOLS = {
    "one-class": one_class,
    "multimodal": multimodal,
    "few-shot": few_shot,
    "impurity": impurity,
    "k-sweep": k_sweep,
    "kmeans": kmeans_sweep,
    "group": group,
    "int8": int8_delta,
}
