"""Synthetic image files for fast runtime tests: smooth gradients (normal) and blotches with
stripes (anomalous); ``tiny_model.make_tiny_model`` tells them apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def texture(rng: np.random.Generator, kind: str = "normal", size: int = 48) -> np.ndarray:
    """A BGR uint8 image: 'normal' = smooth gradient + mild noise; 'anomalous' = a bright
    high-contrast blotch and stripes on top."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b, c = rng.uniform(10, 50, size=3)  # each normal image has its own gentle gradient
    base = np.stack([80 + a * xx, 100 + b * yy, 120 + c * (xx + yy) / 2], -1)
    img = base + rng.normal(0, 6, size=base.shape)
    if kind == "anomalous":
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        r = size // 5
        mask = (yy * size - cy) ** 2 + (xx * size - cx) ** 2 < r * r
        img[mask] = [20, 230, 250]
        img[:, ::3] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(folder, n: int, kind: str = "normal", seed: int = 0, ext: str = ".png"):
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"{kind}_{i:04d}{ext}"
        cv2.imwrite(str(p), texture(rng, kind))
        out.append(p)
    return out
