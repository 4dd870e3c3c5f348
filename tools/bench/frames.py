"""Benchmark inputs: real photos (scikit-image's sample data) turned into camera-sized JPEG frames.

A camera frame is what dn2 scores in the field, so each photo is scaled to cover the frame size
(default 1280x720), cropped at a seeded offset, given mild sensor-like noise (upscaled photos are
otherwise unrealistically smooth and decode faster than real frames), and written as a JPEG
(quality 90). Decode and preprocess then cost what they cost on a real 720p stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from dn2.runtime.errors import Dn2Error

# scikit-image photos that ship inside the wheel (no download); grayscale ones become 3-channel.
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "camera",
    "moon",
    "brick",
    "grass",
    "gravel",
    "clock",
    "coins",
    "cell",
)
NOISE_SIGMA = 2.0  # grey levels; roughly the read noise of a decent 720p sensor
JPEG_QUALITY = 90


def parse_frame_size(text: str) -> Tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise Dn2Error(
            f"--frame-size expects WIDTHxHEIGHT such as 1280x720, found {text!r}"
        ) from None
    if w < 32 or h < 32:
        raise Dn2Error(f"--frame-size must be at least 32x32, found {text!r}")
    return w, h


def sample_photos() -> List[np.ndarray]:
    """The sample photos as RGB uint8 HxWx3 arrays."""
    try:
        import skimage.data as data
    except ImportError as exc:
        from dn2.runtime.errors import MissingExtraError

        raise MissingExtraError("scikit-image", "tools", "benchmark photos") from exc
    out = []
    for name in PHOTOS:
        img = getattr(data, name)()
        if isinstance(img, tuple):  # stereo pairs
            img = img[0]
        img = np.asarray(img)
        if img.dtype != np.uint8:
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, :3]))
    return out


def make_frames(
    out_dir: str | Path, n: int, frame_size: Tuple[int, int] = (1280, 720), seed: int = 0
) -> List[str]:
    """Write ``n`` JPEG frames of ``frame_size`` (w, h) into ``out_dir``; returns their paths."""
    import cv2

    if n < 1:
        raise Dn2Error(f"need at least one benchmark image, asked for {n}")
    w, h = frame_size
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    paths = []
    for i in range(n):
        rgb = photos[i % len(photos)]
        if (i // len(photos)) % 2:
            rgb = rgb[:, ::-1]  # later rounds mirror the photo so frames differ
        ph, pw = rgb.shape[:2]
        scale = max(w / pw, h / ph) * (1.0 + 0.15 * rng.random())
        sw, sh = max(w, int(round(pw * scale))), max(h, int(round(ph * scale)))
        big = cv2.resize(np.ascontiguousarray(rgb), (sw, sh), interpolation=cv2.INTER_CUBIC)
        x0, y0 = int(rng.integers(0, sw - w + 1)), int(rng.integers(0, sh - h + 1))
        frame = big[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        frame += rng.normal(0.0, NOISE_SIGMA, frame.shape).astype(np.float32)
        bgr = np.clip(frame, 0, 255).astype(np.uint8)[:, :, ::-1]
        path = out_dir / f"frame_{i:04d}.jpg"
        if not cv2.imwrite(
            str(path), np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        ):
            raise Dn2Error(f"could not write benchmark frame {path}")
        paths.append(str(path))
    return paths
