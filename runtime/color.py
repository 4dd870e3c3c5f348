"""Colour handling: score every frame in the colour space the normal set was in.

A bank of gray pieces (B = G = R) meets colour it never saw on a real camera path: a video
codec's colour conversion and chroma subsampling shift the channels against each other (MJPG
moved B and R by about -2 levels against G on the textile set) and independent per-channel
sensor noise adds colour speckle. ImageNet features react strongly to colour, so such frames
score far above the threshold of a bank fitted on the gray stills. A bank fitted on gray
images therefore scores every input converted to gray (BGR -> gray -> BGR, which leaves a
gray image unchanged), so the camera's colour cast cannot decide.

``--color auto`` (the default) detects the normal set's mode at fit time from the chroma of a
sample of its images: :func:`chroma` is the mean, over a 32 x 32 area-averaged thumbnail, of
each pixel's largest channel deviation from its channel mean, in levels. Averaging to the
thumbnail cancels pixel noise but keeps a cast or real colour. Measured on real images: gray
textile stills 0.0; the same pieces through
OpenCV's MJPG / mp4v writers with sigma-3 per-channel noise at most 1.1 / 1.7; colour photos
(skimage astronaut, coffee, chelsea, rocket, retina) 19-70. A set is gray when at least
:data:`GRAY_SHARE` of the sampled images have chroma below :data:`GRAY_CHROMA`.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np

from .errors import Dn2Error

COLOR_OPTIONS = ("auto", "gray", "color")
GRAY_CHROMA = 4.0  # levels: 2.4x the largest codec + noise cast measured on gray pieces
GRAY_SHARE = 0.95  # a few colour outliers (a stray label) do not make a gray set colour
SAMPLE = 64  # images decoded for the detection (evenly spaced over the set)


def check_option(color: str) -> str:
    if color not in COLOR_OPTIONS:
        raise Dn2Error(
            f"color: expected one of {', '.join(COLOR_OPTIONS)}, found {color!r}", param="color"
        )
    return color


def chroma(img: np.ndarray) -> float:
    """Mean largest channel deviation (levels) of a BGR image's 32 x 32 thumbnail."""
    import cv2

    a = np.asarray(img)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
        return 0.0
    s = cv2.resize(a[..., :3], (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    return float(np.abs(s - s.mean(axis=2, keepdims=True)).max(axis=2).mean())


def detect(images: Iterable[np.ndarray]) -> Dict:
    """{'mode': 'gray'|'color', 'sampled', 'gray_share', 'chroma_p50', 'chroma_max'}."""
    c = np.array([chroma(im) for im in images], np.float64)
    if c.size == 0:
        return {"mode": "color", "sampled": 0, "why": "no image to look at"}
    share = float(np.mean(c < GRAY_CHROMA))
    return {
        "mode": "gray" if share >= GRAY_SHARE else "color",
        "sampled": int(c.size),
        "gray_share": round(share, 4),
        "chroma_p50": round(float(np.median(c)), 3),
        "chroma_max": round(float(c.max()), 3),
        "gray_below": GRAY_CHROMA,
    }


def sample(items: Sequence, n: int = SAMPLE) -> List:
    """Up to ``n`` items evenly spaced over ``items`` (first and last included)."""
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def detect_files(paths: Sequence[str]) -> Dict:
    """:func:`detect` over a sample of image files (unreadable ones are left out)."""
    from .images import read_image

    imgs = []
    for p in sample(list(paths)):
        try:
            imgs.append(read_image(p))
        except Dn2Error:
            continue
    return detect(imgs)


def resolve(color: str, detected: Dict) -> str:
    """The mode to fit and score with: an explicit option wins over the detection."""
    check_option(color)
    return detected.get("mode", "color") if color == "auto" else color


def to_gray3(batch: np.ndarray) -> np.ndarray:
    """BGR uint8 [..., H, W, 3] -> the same shape with B = G = R = luma (ITU-R BT.601)."""
    import cv2

    x = np.ascontiguousarray(batch)
    flat = x.reshape(-1, x.shape[-2], 3)  # OpenCV converts one tall image, all at once
    g = cv2.cvtColor(flat, cv2.COLOR_BGR2GRAY)
    return np.repeat(g[..., None], 3, axis=-1).reshape(x.shape)
