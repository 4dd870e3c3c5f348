"""The scoring primitives the protocols need, taken from the runtime (one implementation).

Evaluation scores with the very code a deployed bundle scores with: ``dn2.runtime.scoring``
(paper eq. 2, leave-one-out, cleaning 3.2, pooling 3.3), ``dn2.runtime.bank`` (always the
*exact* bank here, so a reported ROC-AUC never carries HNSW recall error) and
``dn2.runtime.kmeans`` (5.1). This module only adapts shapes and caps k at the bank size.
"""

from __future__ import annotations

import numpy as np

from dn2.runtime.bank import build_bank
from dn2.runtime.groups import pool_groups
from dn2.runtime.kmeans import kmeans
from dn2.runtime.scoring import clean as _clean
from dn2.runtime.scoring import knn_score, l2normalize, loo_knn_scores


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return l2normalize(x)


def knn_scores(bank: np.ndarray, queries: np.ndarray, k: int = 2) -> np.ndarray:
    """Paper eq. 2: mean squared L2 distance of each query to its k nearest bank rows
    (k capped at the bank size: a 1-shot bank scores by its single image)."""
    if len(bank) == 0:
        raise ValueError("kNN bank is empty")
    return knn_score(build_bank(bank, "exact"), queries, int(min(k, len(bank))))


def loo_scores(bank: np.ndarray, k: int = 2) -> np.ndarray:
    """Leave-one-out kNN score of every bank row against the other rows."""
    return loo_knn_scores(bank, k)


def clean(bank: np.ndarray, fraction: float, k: int = 2) -> np.ndarray:
    """Paper 3.2: sorted indices of the rows kept after dropping the ``fraction`` with the
    largest leave-one-out kNN score."""
    if len(bank) <= k:
        return np.arange(len(bank))
    keep, _dist = _clean(bank, fraction, k, index="exact")
    return np.flatnonzero(keep)


def kmeans_centres(x: np.ndarray, c: int, seed: int = 0) -> np.ndarray:
    """C k-means centres of ``x`` (C capped at the number of rows)."""
    return np.asarray(kmeans(x, int(min(c, len(x))), seed=seed).centres, np.float32)


def pool_sets(x: np.ndarray, sets: np.ndarray, how: str) -> np.ndarray:
    """Set features: [n_sets, D] for mean / max (the runtime's pooling, paper 3.3), or
    [n_sets, M*D] for concatenation in set order (the paper's 4.5 baseline)."""
    if how == "concat":
        return x[sets].reshape(len(sets), -1)
    return pool_groups(x, list(sets), how)
