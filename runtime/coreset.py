"""Compressing normal patch features: PatchCore's greedy coreset, streamed with bounded memory.

``greedy_coreset(x, n)``: farthest-point selection (Roth et al. 2022, "PatchCore", sec. 3.2) on
a Johnson-Lindenstrauss random projection of the features (``proj`` dims, Gaussian, seeded).
Each step adds the point farthest from everything chosen so far, so rare normal patterns (the
ones a random subsample loses and that then score as anomalies) are kept. Cost: ``n`` matrix-
vector products over the candidates, numpy only.

``StreamingCoreset``: the fit never holds all patches of all images. Images arrive in chunks;
each image contributes at most ``per_image`` patches (a greedy coreset of its own patches);
those go into a pool that is shrunk by a greedy coreset to ``capacity // 2`` whenever it
exceeds ``capacity``. ``result(n)`` returns a final coreset of ``n`` rows from the pool.
Peak memory: one chunk's patches plus ``capacity`` rows.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .errors import Dn2Error

PROJ_DIM = 128  # random projection for the selection (PatchCore uses 128)


def _projection(dim: int, proj: int, seed: int) -> Optional[np.ndarray]:
    if dim <= proj:
        return None
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((dim, proj)) / np.sqrt(proj)).astype(np.float32)


def greedy_coreset(x: np.ndarray, n: int, proj: int = PROJ_DIM, seed: int = 0) -> np.ndarray:
    """Indices (int64, selection order) of ``n`` rows of ``x`` chosen by farthest-point
    selection in a random projection; all rows when ``n >= len(x)``."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise Dn2Error(f"coreset: expected a [N, D] array, found shape {x.shape}")
    m = x.shape[0]
    if n >= m:
        return np.arange(m, dtype=np.int64)
    if n < 1:
        raise Dn2Error(f"coreset: expected at least 1 row to keep, found {n}")
    r = _projection(x.shape[1], proj, seed)
    z = np.ascontiguousarray(x @ r if r is not None else x)
    zn = np.einsum("ij,ij->i", z, z)
    rng = np.random.default_rng(seed)
    chosen = np.empty(n, np.int64)
    j = int(rng.integers(m))
    d = np.maximum(zn - 2.0 * (z @ z[j]) + zn[j], 0.0)
    chosen[0] = j
    for i in range(1, n):
        j = int(np.argmax(d))
        chosen[i] = j
        np.minimum(d, np.maximum(zn - 2.0 * (z @ z[j]) + zn[j], 0.0), out=d)
    return chosen


class StreamingCoreset:
    """A bounded pool of patch features, fed per image chunk (see the module doc)."""

    def __init__(self, dim: int, per_image: int, capacity: int, seed: int = 0):
        if per_image < 1 or capacity < 2 * per_image:
            raise Dn2Error(
                f"patch pool: expected per_image >= 1 and capacity >= 2 x per_image, "
                f"found {per_image} and {capacity}"
            )
        self.dim, self.per_image, self.capacity, self.seed = dim, per_image, capacity, seed
        self._parts: List[np.ndarray] = []
        self._n = 0
        self.images = 0
        self.shrinks = 0

    @property
    def n(self) -> int:
        return self._n

    def add_image(self, feats: np.ndarray) -> None:
        """``feats``: one image's patches, [P, dim]."""
        f = np.asarray(feats, np.float32).reshape(-1, self.dim)
        keep = greedy_coreset(f, self.per_image, seed=self.seed + self.images)
        self._parts.append(f[np.sort(keep)])
        self._n += len(keep)
        self.images += 1
        if self._n > self.capacity:
            pool = self.pool()
            idx = greedy_coreset(pool, self.capacity // 2, seed=self.seed + 7919 * self.shrinks)
            self._parts, self._n = [pool[np.sort(idx)]], self.capacity // 2
            self.shrinks += 1

    def pool(self) -> np.ndarray:
        if not self._parts:
            return np.zeros((0, self.dim), np.float32)
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0]

    def result(self, n: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
        """``n`` rows of the pool by greedy coreset; with per-channel ``weights`` [dim] the
        pool is scaled by them first (selection and rows in the weighted space)."""
        pool = self.pool()
        if len(pool) == 0:
            raise Dn2Error("patch bank: expected patches from at least one image, found none")
        if weights is not None:
            pool = pool * np.asarray(weights, np.float32)
        return pool[np.sort(greedy_coreset(pool, n, seed=self.seed + 1))]
