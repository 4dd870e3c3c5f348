"""DN2 scores (paper 3.1-3.3, 4.5, 5.1): kNN distance, leave-one-out, cleaning, group pooling.

* ``knn_score``: paper eq. 2, the mean squared L2 distance to the k nearest bank entries.
* ``loo_scores``: the same score for each bank member against the *other* members (its own
  entry is removed by id, not by position, so exact duplicates cannot hide a self-match).
* ``loo_kmeans_scores``: leave-one-out when the bank holds k-means centres. A centre is partly
  made of the point being scored (and for an outlier that owns a centre, *is* the point), so
  scoring a training point against the final centres would be optimistic. Re-fitting the
  centres without each point is N k-means runs; instead the points are split into ``folds``
  seeded folds, centres are fitted on the other folds and the held-out fold is scored against
  them: every score comes from centres that never saw the point. The centres come from
  (folds-1)/folds of the data, so they sit slightly farther from a new point than the final
  centres do: the threshold errs on the side of fewer false alarms.
* ``clean``: paper 3.2, drop the ``fraction`` of training embeddings with the largest
  leave-one-out kNN distance.
* ``pool`` (mean, paper 3.3; max selectable) and ``cov_trace`` (paper 4.5, the trace of the
  covariance of the per-image features in a set) for groups.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .bank import Bank, BankError, build_bank
from .errors import Dn2Error

POOLINGS = ("mean", "max")

# Embeddings are L2-normalised before the bank and the kNN score unless a caller says otherwise
# (dn2-fit / dn2-eval --no-l2norm give the paper's plain euclidean distance). Measured on the
# full Fashion-MNIST one-class protocol (60k train / 10k test, efficientnet_lite0 224 px, k=2):
# mean ROC-AUC 95.3 % with, 94.3 % without (the paper's ResNet101: 94.4 %); BENCHMARKS.md.
DEFAULT_L2NORM = True


def l2normalize(x) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32)


def knn_score(bank: Bank, queries, k: int = 2) -> np.ndarray:
    """[N] mean squared L2 distance of each query to its k nearest bank entries (eq. 2)."""
    d, _ = bank.search(queries, k)
    return d.mean(axis=1, dtype=np.float64).astype(np.float32)


def _drop_self(d: np.ndarray, ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """From k+1 neighbours, keep the k that are not the query's own entry."""
    not_self = ids != self_ids[:, None]
    # where the own id is absent (HNSW miss, or > k exact duplicates) drop the last column
    missing = not_self.all(axis=1)
    not_self[missing, -1] = False
    return d[not_self].reshape(len(d), k)


def loo_scores(bank: Bank, x, k: int = 2, ids=None) -> np.ndarray:
    """Leave-one-out eq. 2 scores of bank members ``x`` (rows with bank ids ``ids``)."""
    x = np.asarray(x, dtype=np.float32)
    ids = np.arange(len(x)) if ids is None else np.asarray(ids, dtype=np.int64)
    if bank.n < k + 1:
        raise BankError(
            f"leave-one-out with k={k} needs at least {k + 1} embeddings, found {bank.n}"
        )
    d, nn = bank.search(x, k + 1)
    return _drop_self(d, nn, ids, k).mean(axis=1, dtype=np.float64).astype(np.float32)


def loo_knn_scores(x, k: int = 2) -> np.ndarray:
    """Leave-one-out eq. 2 score of every row of ``x`` against the other rows, on an exact
    bank (k capped at N - 1; a single row scores 0). The one leave-one-out kNN of dn2: fit's
    calibration, the evaluation protocols and the export verification gate all use it."""
    x = np.asarray(x, dtype=np.float32)
    k = int(min(k, len(x) - 1))
    if k < 1:
        return np.zeros(len(x), np.float32)
    return loo_scores(build_bank(x, "exact"), x, k)


def loo_kmeans_scores(
    x, n_centres: int, k: int = 2, folds: int = 5, seed: int = 0, backend: str = "auto", groups=None
) -> np.ndarray:
    """Held-out scores of every row of ``x`` against centres fitted without its fold.
    ``groups`` [N] (duplicate groups, ``dn2.runtime.dupes``): rows of a group share a fold."""
    from .kmeans import centres_without, fold_ids

    x = np.asarray(x, dtype=np.float32)
    folds = max(2, min(int(folds), len(x)))
    if groups is None:
        assign = fold_ids(len(x), folds, seed)
    else:
        uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
        folds = max(2, min(folds, len(uniq)))
        assign = fold_ids(len(uniq), folds, seed)[inv]
    out = np.empty(len(x), np.float32)
    for f in range(folds):
        held = assign == f
        centres = centres_without(x, n_centres, held, seed=seed + 1 + f, backend=backend)
        bank = build_bank(centres, "exact")
        out[held] = knn_score(bank, x[held], min(k, bank.n))
    return out


def clean(x, fraction: float, k: int = 2, index: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """Paper 3.2: (keep mask [N] bool, leave-one-out kNN distances [N]).

    Drops ``floor(fraction * N)`` embeddings with the largest distance; ties keep the earlier.
    """
    x = np.asarray(x, dtype=np.float32)
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise Dn2Error(f"clean: expected a fraction in [0, 1), found {fraction}", param="clean")
    dist = loo_scores(build_bank(x, index), x, k)
    n_drop = int(np.floor(fraction * len(x)))
    keep = np.ones(len(x), bool)
    if n_drop:
        order = np.argsort(-dist.astype(np.float64), kind="stable")
        keep[order[:n_drop]] = False
    return keep, dist


def pool(embs, how: str = "mean") -> np.ndarray:
    """Orderless pooling of a set's embeddings [M, D] -> [D] (paper 3.3: mean)."""
    e = np.asarray(embs, dtype=np.float32)
    if e.ndim != 2 or e.shape[0] == 0:
        raise Dn2Error(f"group: expected embeddings [M >= 1, D], found shape {e.shape}")
    if how == "mean":
        return e.mean(axis=0, dtype=np.float64).astype(np.float32)
    if how == "max":
        return e.max(axis=0)
    raise Dn2Error(f"pooling: expected one of {POOLINGS}, found {how!r}")


def cov_trace(embs) -> float:
    """Paper 4.5: trace of the covariance of the per-image features of a set.

    Equals the sum of the per-dimension variances (unbiased, ddof=1); a set of one image -> 0.
    Needs no training data: a set mixing different content spreads more.
    """
    e = np.asarray(embs, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise Dn2Error(f"group: expected embeddings [M >= 1, D], found shape {e.shape}")
    if e.shape[0] == 1:
        return 0.0
    return float(e.var(axis=0, ddof=1).sum())
