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

import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .bank import Bank, ExactBank, blas_threads, build_bank
from .coreset import greedy_coreset
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


# Query rows per distance block: a block is [BLOCK_ROWS, bank rows] float32 (8 MB at 2048
# rows). 256 and 1024 rows cost the same on one BLAS thread; smaller blocks lost with 2 threads
# under load (a thread hand-off per call).
BLOCK_ROWS = 1024
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Scoring (``PatchScorer``) runs the kNN's sgemm on one BLAS thread: the model runs beside it on
# onnxruntime's threads (the overlapped pipeline), and BLAS threads spinning on a busy core slow
# both (BENCHMARKS.md, "Patch kNN: one sgemm"). The fit's calibration, with no model beside it, keeps
# every BLAS thread.
SCORE_ONE_BLAS_THREAD = True
_SUB: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepared_bank(bank: ExactBank) -> np.ndarray:
    """The bank as the kNN's one sgemm wants it, built once per bank (and again only if rows
    were added): ``[n, dim + 1]`` float32 whose row j is ``[-2 x_j, ||x_j||^2]``, so that
    ``[q, 1] @ row_j = ||q - x_j||^2 - ||q||^2`` with no extra pass over the distances."""
    hit = _PREPARED.get(bank)
    if hit is not None and hit.shape[0] == bank.n:
        return hit
    x = bank.data
    a = np.empty((x.shape[0], x.shape[1] + 1), np.float32)
    np.multiply(x, -2.0, out=a[:, :-1])
    a[:, -1] = np.einsum("ij,ij->i", x, x)
    _PREPARED[bank] = a
    return a


def nearest_sq(
    bank: ExactBank, q: np.ndarray, k: int = 1, block_rows: int = BLOCK_ROWS
) -> np.ndarray:
    """Mean squared L2 distance of each row of ``q`` [N, dim] to its ``k`` nearest bank rows,
    float32 [N]. One sgemm per block of query rows against the prepared bank (the -2 and the
    bank norms folded in), then a row minimum (k = 1) or a partition (k > 1) of the block;
    ``||q||^2`` added per row at the end. ``bank.search`` keeps ids and sorts its k candidates:
    slower for the same distances."""
    a = prepared_bank(bank)
    n, c = q.shape
    k = max(1, min(int(k), a.shape[0]))
    qa = np.empty((n, c + 1), np.float32)
    qa[:, :c] = q
    qa[:, c] = 1.0
    at = a.T
    out = np.empty(n, np.float32)
    step = max(1, int(block_rows))
    buf = np.empty((min(step, n), a.shape[0]), np.float32)
    for i in range(0, n, step):
        d = buf[: min(step, n - i)]
        np.matmul(qa[i : i + step], at, out=d)
        if k == 1:
            d.min(axis=1, out=out[i : i + step])
        else:
            out[i : i + step] = np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)
    out += np.einsum("ij,ij->i", q, q)
    return np.maximum(out, 0.0, out=out)


def sub_bank(bank: ExactBank, rows: int) -> ExactBank:
    """The greedy coreset of ``rows`` of the bank's own rows (built once per bank)."""
    hit = _SUB.get(bank)
    if hit is not None and hit[0] == (bank.n, rows):
        return hit[1]
    sub = build_bank(bank.data[np.sort(greedy_coreset(bank.data, rows))], "exact")
    _SUB[bank] = ((bank.n, rows), sub)
    return sub


def pruned_sq(bank: ExactBank, q: np.ndarray, k: int, topk: int, rows: int) -> np.ndarray:
    """``nearest_sq`` of one image's cells, exact for every cell that can be among its ``topk``
    largest and an upper bound elsewhere: every cell is first scored against ``sub_bank(rows)``
    (a subset, so never nearer than the bank); the cells of highest bound are scored exactly,
    their ``topk``-th largest distance ``t`` is a floor of the true ``topk``-th largest, and
    only the cells whose bound exceeds ``t`` are scored exactly too. A cell left out has
    distance <= bound <= ``t`` and ``topk`` exact cells are >= ``t``, so the ``topk`` largest
    (the image score, max or top-k mean) are the exact ones."""
    topk = max(1, int(topk))
    if rows <= 0 or bank.n <= 2 * rows or len(q) <= 8 * topk:
        return nearest_sq(bank, q, k)
    u = nearest_sq(sub_bank(bank, rows), q, k)
    first = np.argpartition(-u, 4 * topk)[: 4 * topk]
    d = nearest_sq(bank, q[first], k)
    t = np.partition(d, len(d) - topk)[len(d) - topk]
    u[first] = -np.inf  # scored already
    rest = np.flatnonzero(u > t)
    u[first] = d
    if len(rest):
        u[rest] = nearest_sq(bank, q[rest], k)
    return u


def _axis_weights(n: int, step: int) -> Tuple[np.ndarray, np.ndarray]:
    """(sub-grid indices of an axis of ``n`` cells: every ``step``-th and the last one,
    [n, len(indices)] linear-interpolation weights from them to every cell)."""
    idx = np.arange(0, n, step)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    wt = np.zeros((n, len(idx)), np.float32)
    j = np.clip(np.searchsorted(idx, np.arange(n), side="right") - 1, 0, len(idx) - 2)
    f = (np.arange(n) - idx[j]) / np.maximum(idx[j + 1] - idx[j], 1)
    wt[np.arange(n), j] = 1.0 - f
    wt[np.arange(n), j + 1] += f
    return idx, wt


# Seeds of the sub-grid kNN's refinement per top cell of the image score: the cells around the
# 2 x topk highest sub-grid cells are scored exactly. More seeds bring the top-10 mean closer to
# the exact one at more kNN work; what each costs and gives: BENCHMARKS.md, "Sub-grid patch kNN".
SEEDS = 2


def subgrid_sq(
    bank: ExactBank, q: np.ndarray, h: int, w: int, k: int, topk: int, step: int
) -> np.ndarray:
    """``nearest_sq`` of one model input's ``h x w`` cells (rows of ``q``, row-major) from a
    sub-grid. Every ``step``-th cell of each axis (and the last one) is scored against the
    whole bank and the cells between are interpolated linearly (in distance, not squared).
    Then the cells around the ``SEEDS x topk`` highest sub-grid cells are scored exactly, and
    as long as one of the grid's ``topk`` highest values is an interpolated one, it is scored
    exactly too. So the image score (max or top-k mean) is read from exact distances only:
    never above the exact kNN's (the top values of a subset of the cells), equal where the
    exact top cells lie around the highest sub-grid cells. The map is exact where it is high
    and interpolated between exact cells ``step`` apart elsewhere, which its Gaussian
    (``SIGMA``: 2 cells) smooths over. About 1 / step^2 of the cells' sgemm."""
    if step <= 1 or min(h, w) < 2 * step:
        return nearest_sq(bank, q, k)
    iy, wy = _axis_weights(h, step)
    ix, wx = _axis_weights(w, step)
    sub = np.ix_(iy, ix)
    g = q.reshape(h, w, -1)
    ds = np.sqrt(nearest_sq(bank, g[sub].reshape(len(iy) * len(ix), -1), k))
    d = wy @ ds.reshape(len(iy), len(ix)) @ wx.T  # distances, interpolated between exact ones
    exact = np.zeros((h, w), bool)
    exact[sub] = True
    t = max(1, min(int(topk), h * w))

    def score(todo: np.ndarray) -> None:
        todo &= ~exact
        if todo.any():
            d[todo] = np.sqrt(nearest_sq(bank, g[todo], k))
            exact[todo] = True

    ns = min(SEEDS * t, len(iy) * len(ix))
    seeds = np.argpartition(-np.where(exact, d, -np.inf).ravel(), ns - 1)[:ns]
    todo = np.zeros((h, w), bool)
    r = step - 1  # the cells interpolated from a seed
    for y, x in zip(*np.unravel_index(seeds, (h, w))):
        todo[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
    score(todo)
    while True:  # every cell of the top t exact
        top = np.argpartition(-d.ravel(), t - 1)[:t]
        left = top[~exact.ravel()[top]]
        if not len(left):
            return np.square(d).ravel()
        todo = np.zeros(h * w, bool)
        todo[left] = True
        score(todo.reshape(h, w))


def cell_scores(
    bank: Bank,
    patches: np.ndarray,
    k: int = 1,
    one_blas_thread: bool = False,
    prune: int = 0,
    topk: int = 10,
    step: int = 1,
) -> np.ndarray:
    """[N, C, h, w] patch features -> [N, h, w] float32 distances to the normal bank. With
    ``prune`` > 0 (rows of the sub-bank, exact banks only) ``patches`` are one image's model
    inputs and the cells that cannot reach its ``topk`` largest carry an upper bound
    (``pruned_sq``). With ``step`` > 1 (exact banks only, when ``prune`` is 0) each model
    input is scored on a sub-grid of every ``step``-th cell, interpolated and refined exactly
    around its ``topk`` highest cells (``subgrid_sq``)."""
    n, _, h, w = np.shape(patches)
    rows = patch_rows(patches).reshape(n * h * w, -1)
    if isinstance(bank, ExactBank):
        with blas_threads(1 if one_blas_thread else len(rows)):
            if prune:
                d = pruned_sq(bank, rows, k, topk, prune)
            elif step > 1:
                m = h * w
                d = np.concatenate(
                    [
                        subgrid_sq(bank, rows[i : i + m], h, w, k, topk, step)
                        for i in range(0, n * m, m)
                    ]
                )
            else:
                d = nearest_sq(bank, rows, k)
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
        self,
        bank: Bank,
        k: int = 1,
        reduction: str = "topk",
        topk: int = 10,
        sigma: float = SIGMA,
        prune: int = 0,
        weights: Optional[np.ndarray] = None,
        step: int = 1,
    ):
        """``weights``: per-channel float32 [C] applied to every cell before the kNN (the
        bank is stored weighted; ``dn2.runtime.patchweights``), or None. ``step``: the
        sub-grid step of ``subgrid_sq`` (1: every cell exact)."""
        if reduction not in REDUCTIONS:
            raise Dn2Error(f"patch reduction: expected one of {REDUCTIONS}, found {reduction!r}")
        self.bank, self.k, self.reduction, self.topk = bank, int(k), reduction, int(topk)
        self.sigma = float(sigma)
        self.weights = None if weights is None else np.asarray(weights, np.float32)
        self.one_blas_thread = SCORE_ONE_BLAS_THREAD
        self.prune = int(prune) if isinstance(bank, ExactBank) else 0
        self.step = max(1, int(step))
        if isinstance(bank, ExactBank) and bank.n:  # prepared at load, not per image
            prepared_bank(bank)
            if self.prune and bank.n > 2 * self.prune:
                prepared_bank(sub_bank(bank, self.prune))

    def params(self) -> Dict:
        return {"k": self.k, "reduction": self.reduction, "topk": self.topk, "sigma": self.sigma}

    def cells(self, patches: np.ndarray) -> np.ndarray:
        t = self.topk if self.reduction == "topk" else 1
        if self.weights is not None:
            patches = np.asarray(patches, np.float32) * self.weights[None, :, None, None]
        return cell_scores(
            self.bank, patches, self.k, self.one_blas_thread, self.prune, t, self.step
        )

    def image_scores(self, cells: np.ndarray) -> np.ndarray:
        """[N_images, T, h, w] (T model inputs per image) -> [N_images]."""
        return reduce_cells(cells, self.reduction, self.topk)
