"""Real photos for the verification gate and default int8 calibration: scikit-image's samples.

They ship inside the scikit-image wheel (no download). Each is prepared exactly like the runtime
prepares camera frames (shorter side to S/0.875, centre crop S), as BGR uint8.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from dn2.runtime.errors import Dn2Error
from dn2.runtime.modelmeta import ResizeRule

# Colour photos first (the gate uses the first few), then greyscale ones stacked to 3 channels.
COLOUR = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
)
GREY = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock", "text")


def _prepare(bgr: np.ndarray, size: int) -> np.ndarray:
    rule = ResizeRule.for_input_size(size)
    try:
        from dn2.runtime.images import prepare
    except ImportError:  # pragma: no cover - the runtime ships it; fallback keeps export usable
        import cv2

        h, w = bgr.shape[:2]
        r = rule.resize_to / min(h, w)
        im = cv2.resize(
            bgr, (max(size, round(w * r)), max(size, round(h * r))), interpolation=cv2.INTER_AREA
        )
        y, x = (im.shape[0] - size) // 2, (im.shape[1] - size) // 2
        return np.ascontiguousarray(im[y : y + size, x : x + size])
    return prepare(bgr, rule)


def photo_bgr(name: str) -> np.ndarray:
    """One scikit-image sample as BGR uint8 HxWx3 (full size)."""
    try:
        import skimage.data
    except ImportError:
        from dn2.runtime.errors import MissingExtraError

        raise MissingExtraError(
            "scikit-image", "export", "sample photos for verification"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])  # RGB(A) -> BGR


def sample_photos(size: int, names: Sequence[str] = COLOUR + GREY) -> Tuple[List[str], np.ndarray]:
    """(names, uint8 [N, size, size, 3] BGR) of the prepared sample photos."""
    return list(names), np.stack([_prepare(photo_bgr(n), size) for n in names])


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Seeded uniform uint8 noise [n, size, size, 3]: exercises the whole input range."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def folder_images(folder: str, size: int, limit: int = 256) -> Tuple[List[str], np.ndarray]:
    """Calibration images from a folder (recursive, sorted; at most ``limit``), prepared.

    Unreadable files are skipped; a folder with no readable image is an error.
    """
    from dn2.runtime.errors import ImageError
    from dn2.runtime.images import find_images, read_image

    root = Path(folder)
    if not root.is_dir():
        raise Dn2Error(
            f"calib {folder}: expected a folder of images, found "
            f"{'a file' if root.exists() else 'nothing'}",
            param="calib",
        )
    paths, _ = find_images([str(root)])
    names, arrays = [], []
    for p in paths[:limit]:
        try:
            arrays.append(_prepare(read_image(p), size))
            names.append(p)
        except ImageError:
            continue
    if not arrays:
        raise Dn2Error(
            f"calib {folder}: no readable images found ({len(paths)} image files)", param="calib"
        )
    return names, np.stack(arrays)
