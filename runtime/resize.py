"""Shorter side to R, centre crop C — torchvision's geometry and PIL's filter, with numpy/OpenCV.

torchvision's reference (``Resize(R)`` + ``CenterCrop(C)`` on a PIL image) resizes the whole
image to ``R x int(R * long / short)`` with PIL's antialiased bilinear (a triangle filter as wide
as the scale factor, evaluated at each output pixel's exact fractional centre), then crops at
``round((size - C) / 2)``. ``center_box`` reproduces that geometry exactly and maps the crop
back to a fractional rectangle of the source image; ``center_crop_resize`` computes PIL's filter
weights for only the ``C`` output rows and columns of the crop and applies them as two banded
matrix products over just the source region that feeds the crop.

Measured with ``OMP_NUM_THREADS=1 python -m dn2.tools.studies.resize --reps 60`` (2-core dev VM;
efficientnet_lite0 torch trunk; 26 real photos: scikit-image samples, lossless crops of them at
shorter-side scale factors 0.98-5.5, textile images, a 1280x720 frame; cosine of embeddings to
the torchvision pipeline's; CPU ms per frame, one thread, median of 60):

  path                                     min cos  mean cos  max|px|  ms/720p  ms/1080p
  full INTER_LINEAR (no antialias)          0.9494   0.9806     154      0.3      0.4
  full INTER_AREA, then crop                0.9716   0.9939      45      4.9      9.1
  crop-first INTER_AREA, rect floor         0.9716   0.9904     103      2.1      4.0
  crop-first INTER_AREA, rect round         0.9716   0.9922      57      2.1      4.2
  crop-first triangle blur + warpAffine     0.9925   0.9980      40      1.6      3.9
  crop-first PIL weights, banded GEMM       0.99999  1.00000      1      2.2      4.0  <- here
  (PIL itself on the same pixels)           1.0      1.0          0     12.5     24.4

INTER_AREA is a box filter: at an exact 2x (astronaut.png, 512 px) it reaches only 0.972, and
an integer source rectangle shifts the crop by up to half a source pixel (floor is worse than
round). Blur + bilinear warp is cheapest but cannot follow PIL's phase-dependent weights (0.992
at scale factors 1.1-2). The banded GEMM reproduces PIL to one grey level on under 0.2% of the
pixels, for the cost of the crop-first INTER_AREA, under half of a full-frame INTER_AREA, and
about half of decoding that 720p frame from a quality-90 JPEG (3.8 ms, same run).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Tuple

import cv2
import numpy as np

_BLOCK = 8  # output rows per GEMM: 4-8 equally fast, 2 and 16+ slower (720p, 1080p, 4K -> 224)


class Box(NamedTuple):
    """The source rectangle (fractional pixel edges) that becomes the ``crop`` square."""

    x0: float
    y0: float
    x1: float
    y1: float
    new_w: int  # size of the (virtual) full resize, as torchvision computes it
    new_h: int


def center_box(h: int, w: int, resize_to: int, crop: int) -> Box:
    """torchvision Resize(resize_to) + CenterCrop(crop) geometry for an h x w image."""
    if w <= h:
        new_w, new_h = resize_to, int(resize_to * h / w)
    else:
        new_w, new_h = int(resize_to * w / h), resize_to
    # torchvision F.center_crop: int(round((size - crop) / 2.0)) (Python's round, half to even)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    sx, sy = w / new_w, h / new_h  # source pixels per resized pixel, per axis
    return Box(left * sx, top * sy, (left + crop) * sx, (top + crop) * sy, new_w, new_h)


@lru_cache(maxsize=32)  # video frames repeat one geometry: the weights are computed once
def pil_weights(
    in_size: int, out_size: int, in0: float, in1: float
) -> Tuple[int, int, np.ndarray, Tuple[Tuple[int, int, int, int], ...]]:
    """PIL's bilinear ``precompute_coeffs`` for output pixels of the box ``[in0, in1)``.

    Returns ``(lo, hi, W, blocks)``: source pixels ``lo:hi`` feed the output, ``W`` is the
    dense ``out_size x (hi - lo)`` float32 weight matrix (rows sum to 1) and ``blocks`` lists
    ``(j0, j1, a, b)``: output rows ``j0:j1`` read only source columns ``a:b`` of ``W``.
    """
    scale = (in1 - in0) / out_size
    support = max(scale, 1.0)  # triangle half-width: 1 when enlarging, the scale when shrinking
    centers = in0 + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    lo, hi = int(xmin.min()), int(xmax.max())
    x = np.arange(lo, hi)[None, :]
    w = np.clip(1.0 - np.abs((x - centers[:, None] + 0.5) / support), 0.0, None)
    w[(x < xmin[:, None]) | (x >= xmax[:, None])] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    blocks = tuple(
        (
            j0,
            min(j0 + _BLOCK, out_size),
            int(xmin[j0 : j0 + _BLOCK].min()) - lo,
            int(xmax[j0 : j0 + _BLOCK].max()) - lo,
        )
        for j0 in range(0, out_size, _BLOCK)
    )
    w = w.astype(np.float32)
    w.setflags(write=False)
    return lo, hi, w, blocks


def _rows_pass(src: np.ndarray, w: np.ndarray, blocks, n_out: int) -> np.ndarray:
    """Resample the rows of ``src`` (the ``lo:hi`` source rows, x W x 3, uint8 or float32)
    -> n_out x W x 3 float32."""
    flat = src.reshape(src.shape[0], -1)  # (y, x*c)
    out = np.empty((n_out, flat.shape[1]), np.float32)
    for j0, j1, a, b in blocks:  # each block converts just the source rows it reads
        np.matmul(w[j0:j1, a:b], flat[a:b].astype(np.float32, copy=False), out=out[j0:j1])
    return out.reshape(n_out, src.shape[1], 3)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """In place, like PIL's fixed point (``+ 0.5`` then truncate): at an exact 2x the weights
    are eighths and ties are common, where numpy's half-to-even rint was one level off on 13%
    of the pixels."""
    x += 0.5
    return np.floor(x, out=x)


def center_crop_resize(img: np.ndarray, resize_to: int, crop: int) -> np.ndarray:
    """BGR uint8 HxWx3 -> ``crop x crop x 3`` uint8, C-contiguous (see the module doc)."""
    h, w = img.shape[:2]
    b = center_box(h, w, resize_to, crop)
    wx, wy = pil_weights(w, crop, b.x0, b.x1), pil_weights(h, crop, b.y0, b.y1)
    region = img[wy[0] : wy[1], wx[0] : wx[1]]
    # Horizontal pass first, like PIL, on the transposed region (cv2.transpose: fast, 3-channel):
    # doing the vertical pass first moves the intermediate rounding and measurably costs
    # agreement (retina.jpg: 15648 pixels off by one, cosine 0.9996 instead of 1.0000).
    t = _rows_pass(cv2.transpose(region), wx[2], wx[3], crop)  # (crop, y, 3): x resampled
    _round_half_up(t)  # PIL keeps the intermediate image in 8 bits: round like it does
    out = _rows_pass(cv2.transpose(t), wy[2], wy[3], crop)  # (crop, crop, 3)
    out = _round_half_up(np.ascontiguousarray(out))
    return np.clip(out, 0, 255, out=out).astype(np.uint8)
