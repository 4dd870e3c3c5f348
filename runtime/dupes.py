"""Duplicates cannot calibrate against themselves: grouped leave-one-out.

Leave-one-out scores an image against the bank without the image itself. A copy of it (the
same file twice, the same folder given twice, a re-saved or re-encoded copy, a frame and the
next one of a still scene) is still in the bank, is its nearest neighbour, and gives it a
score near zero: the threshold collapses (measured on the textile set with every image twice:
0.0603 -> 0.0279, and 58 of 100 held-out normal images flagged at a 1 % target).

So duplicates are grouped, and an image is scored against the bank without its whole group:

* exact duplicates: files with the same content (sha256 of the bytes);
* near duplicates: embeddings closer than :data:`NEAR_RATIO` x the median distance between
  random pairs of the set (squared L2, as the score). Measured with Lite0 on 200 textile
  stills: the closest two *distinct* pieces sit at 0.21 x that median (0.26 at the 5th
  percentile), a copy with sigma-3 noise at 0.015 (median), a JPEG q90 re-save at 0.04
  (median), a copy shifted by 2 px at 0.19 — a moving scene is not a near duplicate, which is
  why video frames are calibrated in time blocks instead (``dn2.runtime.watch.learn``).

Groups are the connected components of those pairs (a chain of near copies is one group).
"""

from __future__ import annotations

import hashlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .bank import Bank, build_bank
from .errors import Dn2Error

NEAR_RATIO = 0.05  # 4x below the closest distinct textile pair (0.21), 3x above a noisy copy
NEIGHBOURS = 32  # neighbours looked at per image when linking near copies
PAIRS = 4000  # random pairs for the median distance (seeded)


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def _components(n: int, pairs: Sequence[Tuple[int, int]]) -> np.ndarray:
    """Labels [n]: the smallest member index of each connected component."""
    parent = np.arange(n)
    for a, b in pairs:
        ra, rb = _find(parent, int(a)), _find(parent, int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([_find(parent, i) for i in range(n)], np.int64)


def file_hashes(paths: Sequence[str]) -> list:
    """sha256 of each file's bytes (None for one that cannot be read)."""
    out = []
    for p in paths:
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            out.append(None)
            continue
        out.append(h.hexdigest())
    return out


def content_labels(paths: Sequence[str], hashes: Optional[Sequence] = None) -> np.ndarray:
    """Labels [n]: files with the same bytes share one (unreadable files, and rows whose
    hash is None, stay alone). ``hashes``: the files' sha256 already known (a bundle stores
    them, so appended images are matched against files that may be gone)."""
    hashes = file_hashes(paths) if hashes is None else hashes
    first: Dict[str, int] = {}
    out = np.arange(len(hashes), dtype=np.int64)
    for i, digest in enumerate(hashes):
        if digest is not None:
            out[i] = first.setdefault(digest, i)
    return out


def median_pair_distance(x: np.ndarray, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    n = len(x)
    a, b = rng.integers(0, n, PAIRS), rng.integers(0, n, PAIRS)
    keep = a != b
    d = ((x[a[keep]] - x[b[keep]]) ** 2).sum(axis=1, dtype=np.float64)
    return float(np.median(d)) if d.size else 0.0


def find_duplicates(
    x: np.ndarray,
    paths: Optional[Sequence[str]] = None,
    bank: Optional[Bank] = None,
    seed: int = 0,
    hashes: Optional[Sequence] = None,
    near_ratio: float = NEAR_RATIO,
) -> Tuple[np.ndarray, Dict]:
    """(labels [N], report): the duplicate group of each embedding (see the module doc).
    Exact copies by the files' content: ``hashes`` (sha256 or None per row) or, when only
    ``paths`` are given, read from the files. Near copies: closer than ``near_ratio`` x the
    median pair distance (0: none)."""
    x = np.asarray(x, np.float32)
    n = len(x)
    if hashes is not None or paths is not None:
        exact = content_labels(paths or [], hashes)
    else:
        exact = np.arange(n, dtype=np.int64)
    pairs = [(i, int(exact[i])) for i in range(n) if exact[i] != i]
    scale = median_pair_distance(x, seed)
    eps = float(near_ratio) * scale
    if n > 1 and near_ratio > 0:
        bank = bank if bank is not None else build_bank(x, "auto")
        d, nn = bank.search(x, min(n, NEIGHBOURS + 1))
        close = (d <= eps) & (nn != np.arange(n)[:, None]) & (nn >= 0)
        rows, cols = np.nonzero(close)
        pairs += list(zip(rows.tolist(), nn[rows, cols].tolist()))
    labels = _components(n, pairs)
    sizes = np.bincount(labels, minlength=n)
    grouped = sizes[labels] > 1
    n_exact = int((np.bincount(exact, minlength=n)[exact] > 1).sum())
    report = {
        "images_in_groups": int(grouped.sum()),
        "groups": int((sizes > 1).sum()),
        "largest": int(sizes.max()) if n else 0,
        "exact_copies": n_exact,
        "near_copies": int(grouped.sum()) - n_exact,
        "near_below": round(eps, 8),
        "near_ratio": float(near_ratio),
        "median_pair_distance": round(scale, 8),
    }
    return labels, report


def grouped_scores(
    bank: Bank, q: np.ndarray, k: int, q_labels: np.ndarray, bank_labels: np.ndarray
) -> np.ndarray:
    """Eq. 2 scores of queries ``q`` against ``bank`` without the bank entries of their own
    duplicate group (``bank_labels[j]`` is the group of bank row j). For a bank member that
    is its own group, this is plain leave-one-out."""
    q = np.asarray(q, np.float32)
    q_labels, bank_labels = np.asarray(q_labels), np.asarray(bank_labels)
    out = np.empty(len(q), np.float32)
    if not len(q):
        return out
    counts = dict(zip(*np.unique(bank_labels, return_counts=True)))
    own = np.array([counts.get(lab, 0) for lab in q_labels], np.int64)
    if (bank.n - own < k).any():
        worst = int(own.max())
        raise Dn2Error(
            f"calibration: a group of {worst} duplicate images leaves fewer than "
            f"k={k} other images in a bank of {bank.n}; expected at least {k} "
            f"images that are not copies of each other"
        )
    for c in np.unique(own):
        rows = np.flatnonzero(own == c)
        want = int(c) + k
        while True:
            kk = min(bank.n, want)
            d, nn = bank.search(q[rows], kk)
            other = (nn >= 0) & (bank_labels[np.clip(nn, 0, None)] != q_labels[rows, None])
            if other.sum(axis=1).min() >= k or kk == bank.n:
                break
            want *= 2  # an approximate (HNSW) search missed some: look further
        # the first k entries of another group, in distance order
        rank = np.cumsum(other, axis=1)
        take = other & (rank <= k)
        got = take.sum(axis=1)
        s = np.where(take, d, 0.0).sum(axis=1, dtype=np.float64) / np.maximum(got, 1)
        out[rows] = s.astype(np.float32)
    return out


def copy_groups(
    x: np.ndarray,
    origin: Optional[np.ndarray],
    temporal: Optional[np.ndarray],
    hashes: Optional[Sequence[Optional[str]]],
    bank: Optional[Bank],
    seed: int,
    near_ratio: float,
) -> Tuple[np.ndarray, Dict]:
    """(a group label per row of a fit, the :func:`find_duplicates` report) for the fit's rows
    ``x``: still images grouped with their exact (``hashes``) and near copies; frames
    (``temporal``) are calibrated in time blocks, so copies matter among the images only.
    Copies are looked for among the inputs only: camera variants (``origin`` >= 0) are far
    from each other and would widen the near-copy scale and chain unrelated images into one
    group; each variant then joins its original's group (calibrated without it, and vice
    versa). ``bank``: the fit's bank over all of ``x``, reused when no row is a variant."""
    var = np.zeros(len(x), bool) if origin is None else origin >= 0
    labels = np.arange(len(x))
    if temporal is None:
        rows = np.flatnonzero(~var)
        sub, dups = find_duplicates(
            x[rows],
            seed=seed,
            bank=bank if not var.any() else None,
            hashes=None if hashes is None else [hashes[i] for i in rows],
            near_ratio=near_ratio,
        )
        labels[rows] = rows[sub]
    else:
        dups = {"images_in_groups": 0, "frames": "time blocks"}
        still = np.flatnonzero(~temporal & ~var)
        if still.size > 1:
            sub, dups = find_duplicates(
                x[still], seed=seed, hashes=[hashes[i] for i in still], near_ratio=near_ratio
            )
            labels[still] = still[sub]
    labels[var] = labels[origin[var]]
    return labels, dups
