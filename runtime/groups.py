"""Normal groups for group anomaly detection (paper 3.3, 4.5) and their leave-one-out scores.

A group's feature is the pooled (mean by default, max selectable) embedding of its images,
scored by eq. 2 against a bank of pooled *normal* groups. Normal groups come from

* a folder of group folders (each sub-folder is one group), or
* sampling: ``n_groups`` seeded draws of ``size`` distinct normal images (paper 4.5 trains on
  1000 sets; that is the default).

Leave-one-out for groups must exclude more than the group itself: sampled groups share
images, and a group that shares members with its neighbour sits artificially close to it.
``group_loo_scores`` therefore scores each group only against groups with *no image in common*
(exact distances, computed in row blocks so memory stays bounded); groups without k disjoint
neighbours are left out of the calibration and counted.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from .errors import Dn2Error
from .scoring import cov_trace, pool

DEFAULT_GROUPS = 1000
MIN_CALIBRATION_GROUPS = 10


def sample_groups(
    n_images: int, size: int, n_groups: int = DEFAULT_GROUPS, seed: int = 0
) -> List[np.ndarray]:
    """``n_groups`` seeded index sets of ``size`` distinct images out of ``n_images``."""
    size, n_groups = int(size), int(n_groups)
    if size < 1:
        raise Dn2Error(f"group_size: expected >= 1, found {size}", param="group_size")
    if size > n_images:
        raise Dn2Error(
            f"group_size {size}: expected at most the number of normal images, "
            f"found {n_images} images",
            param="group_size",
        )
    if n_groups < 1:
        raise Dn2Error(f"n_groups: expected >= 1 normal groups, found {n_groups}", param="n_groups")
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_images, size, replace=False)) for _ in range(n_groups)]


def pool_groups(x: np.ndarray, members: Sequence[np.ndarray], how: str = "mean") -> np.ndarray:
    return np.stack([pool(x[m], how) for m in members]).astype(np.float32)


def cov_traces(x: np.ndarray, members: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([cov_trace(x[m]) for m in members], np.float64)


def group_loo_scores(
    pooled: np.ndarray, members: Sequence[np.ndarray], k: int, block: int = 256
) -> Tuple[np.ndarray, int]:
    """(scores [G] float, NaN where fewer than k disjoint groups exist; count of those NaNs).

    Each group's score is the mean squared L2 distance to its k nearest groups that share no
    image with it.
    """
    p = np.asarray(pooled, np.float32)
    g = len(p)
    owners = {}  # image index -> groups holding it
    for gi, m in enumerate(members):
        for i in np.asarray(m).tolist():
            owners.setdefault(i, []).append(gi)
    owners = {i: np.asarray(v, np.int64) for i, v in owners.items()}
    norms = np.einsum("ij,ij->i", p, p)
    out = np.full(g, np.nan, np.float64)
    for b0 in range(0, g, block):
        rows = p[b0 : b0 + block]
        d = norms[b0 : b0 + block, None] - 2.0 * (rows @ p.T) + norms[None, :]
        np.maximum(d, 0.0, out=d)
        for r in range(len(rows)):
            gi = b0 + r
            shared = np.concatenate(
                [owners[i] for i in np.asarray(members[gi]).tolist()] + [np.array([gi])]
            )
            d[r, shared] = np.inf
        kk = min(k, g)
        part = np.partition(d, kk - 1, axis=1)[:, :kk] if kk < g else d
        ok = np.isfinite(part).all(axis=1)
        out[b0 : b0 + block][ok] = part[ok].mean(axis=1)
    return out, int(np.isnan(out).sum())


def check_calibration(scores: np.ndarray, k: int) -> np.ndarray:
    good = scores[np.isfinite(scores)]
    if good.size < MIN_CALIBRATION_GROUPS:
        raise Dn2Error(
            f"group threshold: expected at least {MIN_CALIBRATION_GROUPS} normal groups with "
            f"{k} disjoint neighbours, found {good.size} of {scores.size}; use more normal "
            f"images, more groups or a smaller group_size",
            param="group_size",
        )
    return good
