"""Views: how a frame becomes model inputs, and how maps go back to frame coordinates.

* ``crop``  (default, paper 4.6): shorter side to S/0.875, centre crop S (``dn2.runtime.resize``).
* ``full``: the whole frame (or ROI) resampled to S x S (the aspect ratio is not kept).
* ``tiles=RxC``: the frame (or ROI) cut into R rows x C columns of equal tiles, each resampled to
  S x S and batched through the model; maps of the tiles are stitched into one frame map.
* ``roi=(x, y, w, h)``: any of the above applied to that rectangle of the frame only.

Every input is a fractional source rectangle resampled with PIL's antialiased bilinear weights
(the same filter as the crop path), so fit and score see the same pixels whatever the view.
A view is fixed at fit time and recorded in the bundle (``view`` section of the manifest).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .errors import Dn2Error
from .modelmeta import ResizeRule
from .resize import _round_half_up, _rows_pass, center_box, pil_weights

KINDS = ("crop", "full", "tiles")
MAX_TILES = 64
Rect = Tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels (fractional)


class ViewError(Dn2Error):
    """A view or ROI that does not fit the frame or cannot be parsed."""


@dataclass(frozen=True)
class View:
    kind: str = "crop"
    rows: int = 1
    cols: int = 1
    roi: Optional[Tuple[int, int, int, int]] = None  # x, y, w, h

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ViewError(
                f"view: expected one of crop, full, tiles=RxC, found {self.kind!r}", param="view"
            )
        if not (1 <= self.rows and 1 <= self.cols and self.rows * self.cols <= MAX_TILES):
            raise ViewError(
                f"view tiles: expected 1..{MAX_TILES} tiles, found {self.rows}x{self.cols}",
                param="view",
            )
        if self.roi is not None and (
            len(self.roi) != 4 or min(self.roi[2:]) < 1 or min(self.roi[:2]) < 0
        ):
            raise ViewError(
                f"roi: expected x,y,w,h with x,y >= 0 and w,h >= 1, found {self.roi}", param="roi"
            )

    @classmethod
    def parse(cls, text: str = "crop", roi: Optional[str] = None) -> View:
        """``crop`` | ``full`` | ``tiles=RxC``, and ``roi`` as ``x,y,w,h`` (pixels)."""
        text = (text or "crop").strip().lower()
        rows = cols = 1
        m = re.fullmatch(r"tiles=(\d+)x(\d+)", text)
        if m:
            kind, rows, cols = "tiles", int(m.group(1)), int(m.group(2))
        elif text in ("crop", "full"):
            kind = text
        else:
            raise ViewError(
                f"view: expected crop, full or tiles=RxC (e.g. tiles=2x3), found {text!r}",
                param="view",
            )
        box = None
        if roi:
            try:
                box = tuple(int(v) for v in roi.split(","))
            except ValueError:
                box = ()
            if len(box) != 4:
                raise ViewError(
                    f"roi: expected x,y,w,h (four integers, pixels), found {roi!r}", param="roi"
                )
        return cls(kind, rows, cols, box)

    def to_dict(self) -> Dict:
        return {
            "kind": self.kind,
            "rows": self.rows,
            "cols": self.cols,
            "roi": list(self.roi) if self.roi else None,
        }

    @classmethod
    def from_dict(cls, d: Optional[Dict]) -> View:
        if not d:
            return cls()
        try:
            roi = d.get("roi")
            return cls(
                str(d["kind"]),
                int(d.get("rows", 1)),
                int(d.get("cols", 1)),
                tuple(int(v) for v in roi) if roi else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ViewError(
                f"view: expected {{kind, rows, cols, roi}}, found {d!r} ({exc})"
            ) from None

    def __str__(self) -> str:
        base = f"tiles={self.rows}x{self.cols}" if self.kind == "tiles" else self.kind
        return base + (f" roi={','.join(map(str, self.roi))}" if self.roi else "")

    @property
    def n_inputs(self) -> int:
        return self.rows * self.cols

    def region(self, h: int, w: int) -> Rect:
        """The frame rectangle the view looks at (the ROI, or the whole frame)."""
        if self.roi is None:
            return (0.0, 0.0, float(w), float(h))
        x, y, rw, rh = self.roi
        if x + rw > w or y + rh > h:
            raise ViewError(
                f"roi {x},{y},{rw},{rh}: expected it inside the {w}x{h} frame, "
                f"found it reaching to {x + rw}x{y + rh}",
                param="roi",
            )
        return (float(x), float(y), float(x + rw), float(y + rh))

    def rects(self, h: int, w: int, rule: ResizeRule) -> List[Rect]:
        """The source rectangles (frame pixels) that become the model inputs."""
        x0, y0, x1, y1 = self.region(h, w)
        if self.kind == "crop":
            rh, rw = int(round(y1 - y0)), int(round(x1 - x0))
            b = center_box(rh, rw, rule.resize_to, rule.crop)
            return [(x0 + b.x0, y0 + b.y0, x0 + b.x1, y0 + b.y1)]
        if self.kind == "full":
            return [(x0, y0, x1, y1)]
        tw, th = (x1 - x0) / self.cols, (y1 - y0) / self.rows
        return [
            (x0 + c * tw, y0 + r * th, x0 + (c + 1) * tw, y0 + (r + 1) * th)
            for r in range(self.rows)
            for c in range(self.cols)
        ]

    def coverage(self, h: int, w: int, rule: ResizeRule) -> float:
        """Fraction of the frame's area that some model input sees."""
        area = sum((r[2] - r[0]) * (r[3] - r[1]) for r in self.rects(h, w, rule))
        return float(area / (h * w))


def warn_coverage(view: View, h: int, w: int, rule: ResizeRule, what: str = "frame") -> float:
    """Warn (``warnings.warn``, shown once per place) when the view drops > half the frame."""
    cov = view.coverage(h, w, rule)
    if cov < 0.5:
        warnings.warn(
            f"view {view} looks at {cov:.0%} of a {w}x{h} {what}; {1 - cov:.0%} is "
            f"never scored (try --view full or --view tiles=RxC)",
            stacklevel=2,
        )
    return cov


def resample(img: np.ndarray, rect: Rect, size: int) -> np.ndarray:
    """The ``rect`` of a BGR uint8 image -> ``size x size x 3`` uint8 (PIL bilinear weights)."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = rect
    wx, wy = pil_weights(w, size, float(x0), float(x1)), pil_weights(h, size, float(y0), float(y1))
    region = img[wy[0] : wy[1], wx[0] : wx[1]]
    t = _rows_pass(cv2.transpose(region), wx[2], wx[3], size)
    _round_half_up(t)
    out = _round_half_up(np.ascontiguousarray(_rows_pass(cv2.transpose(t), wy[2], wy[3], size)))
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def view_inputs(img: np.ndarray, view: View, rule: ResizeRule) -> Tuple[np.ndarray, List[Rect]]:
    """One BGR frame -> (uint8 [T, S, S, 3] model inputs, their T source rectangles)."""
    h, w = img.shape[:2]
    rects = view.rects(h, w, rule)
    return np.stack([resample(img, r, rule.crop) for r in rects]), rects


def stitch(
    maps: Sequence[np.ndarray], rects: Sequence[Rect], h: int, w: int, fill: float = 0.0
) -> np.ndarray:
    """Per-input maps (any grid) -> one float32 [h, w] frame map; each map is bilinearly
    resized onto its rectangle; pixels no input sees get ``fill``."""
    out = np.full((h, w), fill, np.float32)
    for m, (x0, y0, x1, y1) in zip(maps, rects):
        ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
        ix1, iy1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        # sample the map at the pixel centres of the integer box (map cell j covers
        # [x0 + j * cw, x0 + (j + 1) * cw) of the frame)
        gh, gw = m.shape
        xs = ((np.arange(ix0, ix1) + 0.5 - x0) / (x1 - x0) * gw - 0.5).astype(np.float32)
        ys = ((np.arange(iy0, iy1) + 0.5 - y0) / (y1 - y0) * gh - 0.5).astype(np.float32)
        mx, my = np.meshgrid(xs, ys)
        out[iy0:iy1, ix0:ix1] = cv2.remap(
            np.ascontiguousarray(m, np.float32),
            mx,
            my,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return out
