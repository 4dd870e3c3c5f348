"""Anomaly maps as pictures and files: heatmap overlays, and ``score --maps DIR`` outputs.

Colours are on one fixed scale for every image of a bundle: 0 -> blue, the pixel threshold ->
the middle of the colour map (green), twice the pixel threshold and above -> red, so two
overlays can be compared by eye. Pixels under 3/4 of the pixel threshold are not tinted; from there the tint grows to
full strength at the threshold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

from .errors import Dn2Error

ALPHA = 0.5  # heat weight where the map is hot


def colorize(m: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """float map -> BGR uint8 heat image (COLORMAP_JET on value / (2 x pixel threshold))."""
    scale = 2.0 * max(float(pixel_threshold), 1e-12)
    u8 = np.clip(m / scale * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_JET)


def overlay(
    img: np.ndarray,
    m: np.ndarray,
    pixel_threshold: float,
    peak: Optional[List[int]] = None,
    box: Optional[List[int]] = None,
) -> np.ndarray:
    """The image with the map blended over it (from 3/4 of the pixel threshold up),
    the box over the pixel threshold in white and the peak as a cross."""
    if m.shape != img.shape[:2]:
        m = cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = colorize(m, pixel_threshold)
    a = np.clip((m / max(float(pixel_threshold), 1e-12) - 0.75) * 4.0, 0.0, 1.0) * ALPHA
    out = img.astype(np.float32) * (1 - a[..., None]) + heat.astype(np.float32) * a[..., None]
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    t = max(1, round(min(img.shape[:2]) / 200))
    if box is not None:
        x, y, w, h = box
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), t)
    if peak is not None:
        cv2.drawMarker(
            out, (int(peak[0]), int(peak[1])), (255, 255, 255), cv2.MARKER_CROSS, max(8, 6 * t), t
        )
    return out


class MapWriter:
    """``score --maps DIR``: per image ``STEM.png`` (overlay) and ``STEM.npy`` (raw float32 map,
    the image's own height x width). A stem seen twice gets ``-2``, ``-3``, ..."""

    def __init__(self, folder, pixel_threshold: float):
        self.dir = Path(folder)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Dn2Error(
                f"maps {folder}: expected a writable folder, found {exc.strerror}", param="maps"
            ) from None
        if not os.access(self.dir, os.W_OK):
            raise Dn2Error(
                f"maps {folder}: expected a writable folder, found it read-only", param="maps"
            )
        self.pixel_threshold = float(pixel_threshold)
        self._stems: Dict[str, int] = {}

    def _stem(self, path: str) -> str:
        stem = Path(path).stem or "image"
        n = self._stems.get(stem, 0) + 1
        self._stems[stem] = n
        return stem if n == 1 else f"{stem}-{n}"

    def write(self, path: str, img: np.ndarray, m: np.ndarray, peak=None, box=None) -> Dict:
        stem = self._stem(path)
        if m.shape != img.shape[:2]:  # a draft-decoded JPEG: the map goes to the full size
            sy, sx = img.shape[0] / m.shape[0], img.shape[1] / m.shape[1]
            m = cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
            peak = None if peak is None else [int(peak[0] * sx), int(peak[1] * sy)]
            box = (
                None
                if box is None
                else [
                    int(box[0] * sx),
                    int(box[1] * sy),
                    int(round(box[2] * sx)),
                    int(round(box[3] * sy)),
                ]
            )
        npy, png = self.dir / f"{stem}.npy", self.dir / f"{stem}.png"
        with open(npy, "wb") as f:
            np.save(f, np.ascontiguousarray(m, np.float32), allow_pickle=False)
        if not cv2.imwrite(str(png), overlay(img, m, self.pixel_threshold, peak, box)):
            raise Dn2Error(f"maps: could not write {png}", param="maps")
        return {"map": str(npy), "overlay": str(png)}
