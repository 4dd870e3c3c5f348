"""More kinds of bad image files: every format damaged in every usual way, and non-images.

``FAMILY_NAMES`` names every kind (known without building, so tests can list them);
``build_families(folder)`` writes one file per kind and returns ``[(name, path, expect)]`` with
``expect`` one of ``"refused"`` (an ImageError saying expected / found), ``"decoded"`` (a BGR
uint8 image of the card's shape) or ``"either"`` (damage whose outcome depends on the decoder:
refused clearly or decoded to a whole BGR image, never a crash, a hang or a half answer).
Made with OpenCV and raw bytes only.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path
from typing import List, Tuple

import numpy as np

FORMATS = (".jpg", ".png", ".bmp", ".webp", ".tiff", ".ppm", ".pgm")
DAMAGE = (
    "cut-10-bytes",
    "cut-third",
    "cut-two-thirds",
    "cut-last-byte",
    "flip-header",
    "flip-middle",
    "trailing-garbage",
    "7x7",
    "8x8",
)
OTHERS = (
    "random bytes .jpg",
    "zeros .png",
    "HTML .jpg",
    "JSON .png",
    "ZIP .jpg",
    "ELF .png",
    "gzip .jpg",
    "JPEG SOI only",
    "PNG signature only",
    "one 0xFF byte .jpg",
    "UTF-16 text .png",
    "250-char name",
    "spaces and unicode name",
    "non-UTF-8 name",
)
FAMILY_NAMES = tuple(f"{fmt[1:]} {d}" for fmt in FORMATS for d in DAMAGE) + OTHERS


def _card(h: int = 48, w: int = 64, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(h * w)
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (30, 30, 220)
    a[:, w // 2 :] = (220, 30, 30)
    a = np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
    return a[:, :, 0].copy() if gray else a


def _encode(fmt: str, img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(fmt, img)
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode {fmt}")
    return buf.tobytes()


def build_families(folder) -> List[Tuple[str, str, str]]:
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    out: List[Tuple[str, str, str]] = []

    def put(name: str, filename, data: bytes, expect: str) -> None:
        p = (
            os.path.join(os.fsencode(root), filename)
            if isinstance(filename, bytes)
            else str(root / filename)
        )
        with open(p, "wb") as f:
            f.write(data)
        out.append((name, os.fsdecode(p), expect))

    for fmt in FORMATS:
        gray = fmt == ".pgm"
        good = _encode(fmt, _card(gray=gray))
        n = len(good)
        stem = fmt[1:]
        rng = np.random.default_rng(n)
        flip_h, flip_m = bytearray(good), bytearray(good)
        flip_h[min(12, n - 1)] ^= 0xFF
        flip_m[n // 2] ^= 0xFF
        variants = {
            "cut-10-bytes": (good[:10], "refused"),
            "cut-third": (good[: n // 3], "either"),
            "cut-two-thirds": (good[: 2 * n // 3], "either"),
            "cut-last-byte": (good[:-1], "either"),
            "flip-header": (bytes(flip_h), "either"),
            "flip-middle": (bytes(flip_m), "either"),
            "trailing-garbage": (good + rng.integers(0, 256, 1024, np.uint8).tobytes(), "either"),
            "7x7": (_encode(fmt, _card(7, 7, gray)), "refused"),
            "8x8": (_encode(fmt, _card(8, 8, gray)), "decoded"),
        }
        for d in DAMAGE:
            data, expect = variants[d]
            put(f"{stem} {d}", f"{stem}_{d}{fmt}", data, expect)
    png = _encode(".png", _card())
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("a.txt", "hello")
    others = [
        (
            "random bytes .jpg",
            "random.jpg",
            np.random.default_rng(7).integers(0, 256, 4096, np.uint8).tobytes(),
            "refused",
        ),
        ("zeros .png", "zeros.png", bytes(4096), "refused"),
        ("HTML .jpg", "page.jpg", b"<!DOCTYPE html><html><body>404</body></html>", "refused"),
        ("JSON .png", "data.png", b'{"not": "an image"}', "refused"),
        ("ZIP .jpg", "archive.jpg", zbuf.getvalue(), "refused"),
        ("ELF .png", "program.png", b"\x7fELF\x02\x01\x01" + bytes(64), "refused"),
        ("gzip .jpg", "packed.jpg", gzip.compress(png), "refused"),
        ("JPEG SOI only", "soi.jpg", b"\xff\xd8\xff", "refused"),
        ("PNG signature only", "sig.png", b"\x89PNG\r\n\x1a\n", "refused"),
        ("one 0xFF byte .jpg", "ff.jpg", b"\xff", "refused"),
        ("UTF-16 text .png", "utf16.png", "not an image".encode("utf-16"), "refused"),
        ("250-char name", "n" * 246 + ".png", png, "decoded"),
        ("spaces and unicode name", "caf\u00e9 \u5199\u771f (1).png", png, "decoded"),
        ("non-UTF-8 name", b"latin1-\xe9\xff.png", png, "decoded"),
    ]
    for name, filename, data, expect in others:
        put(name, filename, data, expect)
    assert tuple(x[0] for x in out) == FAMILY_NAMES
    return out
