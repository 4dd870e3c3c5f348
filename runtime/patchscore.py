"""Patch-level kNN: cell scores, image scores and anomaly maps in frame coordinates.

A cell of the model's ``patches`` output (a 3x3-averaged stride-8 feature, see
``dn2.export.patches``) scores its euclidean distance to the nearest normal patch feature of
the patch bank (mean over ``k`` nearest squared distances, then the square root). An image
scores a reduction of its cells: ``max``, or ``topk`` = the mean of the ``topk`` highest cells
(the default: measured better than the max on the textile local defects, BENCHMARKS.md). The
anomaly map is the cell grid of every model input put back on its source rectangle of the
frame (``dn2.runtime.views.stitch``), smoothed by a Gaussian of ``SIGMA`` model-input pixels.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .bank import Bank, ExactBank
from .errors import Dn2Error
from .views import Rect, stitch

REDUCTIONS = ("max", "topk")
# Gaussian sigma of the map, in model-input pixels (2 cells of stride 8). PatchCore's 4 gave
# pixel ROC-AUC 0.9379 on the localisation set, 16 gives 0.9534 (PRO 0.8101 -> 0.8357; 20:
# 0.9538, PRO 0.8298): BENCHMARKS.md, "Map smoothing".
SIGMA = 16.0


def patch_rows(patches: np.ndarray) -> np.ndarray:
    """[N, C, h, w] -> [N, h*w, C] float32 (one row per cell, row-major over the grid)."""
    p = np.asarray(patches, np.float32)
    if p.ndim != 4:
        raise Dn2Error(f"patches: expected [N, C, h, w], found shape {p.shape}")
    n, c, h, w = p.shape
    return np.ascontiguousarray(p.transpose(0, 2, 3, 1).reshape(n, h * w, c))


def reduce_cells(cells: np.ndarray, reduction: str = "topk", topk: int = 10) -> np.ndarray:
    """[N, ...] cell scores -> [N] image scores."""
    flat = np.asarray(cells, np.float32).reshape(len(cells), -1)
    if reduction == "max":
        return flat.max(axis=1)
    if reduction == "topk":
        t = max(1, min(int(topk), flat.shape[1]))
        return np.partition(flat, flat.shape[1] - t, axis=1)[:, -t:].mean(axis=1)
    raise Dn2Error(f"patch reduction: expected one of {REDUCTIONS}, found {reduction!r}")


def nearest_sq(bank: ExactBank, q: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """Squared L2 distance of each row of ``q`` to its nearest bank row: one sgemm and a row
    minimum per block (``bank.search`` keeps ids and sorts k candidates, ~2x slower for k=1)."""
    x, bn = bank.data, np.einsum("ij,ij->i", bank.data, bank.data)
    out = np.empty(len(q), np.float32)
    step = max(1, block // max(1, len(x)))
    for i in range(0, len(q), step):
        qs = q[i : i + step]
        d = qs @ x.T
        d *= -2.0
        d += bn[None, :]
        out[i : i + step] = d.min(axis=1) + np.einsum("ij,ij->i", qs, qs)
    return np.maximum(out, 0.0, out=out)


def cell_scores(bank: Bank, patches: np.ndarray, k: int = 1) -> np.ndarray:
    """[N, C, h, w] patch features -> [N, h, w] float32 distances to the normal bank."""
    n, _, h, w = np.shape(patches)
    rows = patch_rows(patches).reshape(n * h * w, -1)
    if k == 1 and isinstance(bank, ExactBank):
        d = nearest_sq(bank, rows)
    else:
        d = bank.search(rows, k)[0].mean(axis=1)
    return np.sqrt(d).reshape(n, h, w).astype(np.float32)


def frame_map(
    cells: Sequence[np.ndarray],
    rects: Sequence[Rect],
    h: int,
    w: int,
    input_size: int,
    sigma: float = SIGMA,
) -> np.ndarray:
    """Cell grids of one frame's model inputs -> smoothed float32 [h, w] map of the frame."""
    m = stitch(cells, rects, h, w)
    scale = float(np.mean([(r[2] - r[0]) / input_size for r in rects]))  # frame px per input px
    s = sigma * scale
    if s > 0.3:
        m = cv2.GaussianBlur(m, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT)
    return m


def peak_and_box(
    m: np.ndarray, pixel_threshold: Optional[float]
) -> Tuple[List[int], Optional[List[int]]]:
    """([x, y] of the map's maximum, [x, y, w, h] of the connected region over
    ``pixel_threshold`` that holds the peak, or None when the peak is not over it)."""
    iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
    peak = [int(ix), int(iy)]
    if pixel_threshold is None or not m[iy, ix] > pixel_threshold:
        return peak, None
    mask = (m > pixel_threshold).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    x, y, bw, bh = (int(v) for v in stats[labels[iy, ix], :4])
    return peak, [x, y, bw, bh]


class PatchScorer:
    """The patch bank and how to read it; ``params`` go to / come from the manifest."""

    def __init__(
        self, bank: Bank, k: int = 1, reduction: str = "topk", topk: int = 10, sigma: float = SIGMA
    ):
        if reduction not in REDUCTIONS:
            raise Dn2Error(f"patch reduction: expected one of {REDUCTIONS}, found {reduction!r}")
        self.bank, self.k, self.reduction, self.topk = bank, int(k), reduction, int(topk)
        self.sigma = float(sigma)

    def params(self) -> Dict:
        return {"k": self.k, "reduction": self.reduction, "topk": self.topk, "sigma": self.sigma}

    def cells(self, patches: np.ndarray) -> np.ndarray:
        return cell_scores(self.bank, patches, self.k)

    def image_scores(self, cells: np.ndarray) -> np.ndarray:
        """[N_images, T, h, w] (T model inputs per image) -> [N_images]."""
        return reduce_cells(cells, self.reduction, self.topk)
