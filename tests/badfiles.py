"""Build the bad-input corpus: every kind of file an edge box will meet sooner or later.

``build_corpus(folder)`` writes the files and returns a list of ``Case``: either the file must
be refused with an ``ImageError`` whose message contains all of ``says`` (besides the path,
"expected" and "found"), or it must decode, and ``check(img)`` verifies the pixels. Files are
made with OpenCV, PIL and raw bytes; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from dn2.tools.faults.corpus import FAMILY_NAMES, build_families

# A 64 x 48 test card: left half red, right half blue, a green 8 x 8 square at the top-left.
W, H = 64, 48


def card_rgb() -> np.ndarray:
    a = np.zeros((H, W, 3), np.uint8)
    a[:, : W // 2] = (220, 30, 30)
    a[:, W // 2 :] = (30, 30, 220)
    a[:8, :8] = (30, 220, 30)
    return a


def card_bgr() -> np.ndarray:
    return np.ascontiguousarray(card_rgb()[:, :, ::-1])


CASE_NAMES = (
    "zero-byte",
    "truncated JPEG",
    "text named .jpg",
    "PDF named .png",
    "1x1 image",
    "huge aspect 10000x2",
    "PNG bomb header 100000x100000",
    "JPEG bomb header 60000x60000",
    "corrupt PNG data",
    "directory named .jpg",
    "dangling symlink",
    "FIFO named .jpg",
    "chmod 000",
    "missing file",
    "16-bit PNG",
    "CMYK JPEG",
    "RGBA PNG",
    "grayscale PNG",
    "grayscale JPEG",
    "GIF",
    "BMP",
    "WebP lossless",
    "TIFF multi-page (first page)",
    "palette PNG",
    "EXIF-rotated JPEG",
    "image named .txt",
)
# every format damaged in every usual way, and non-images (dn2.tools.faults.corpus)
CASE_NAMES = CASE_NAMES + FAMILY_NAMES


@dataclass
class Case:
    name: str
    path: str
    says: Tuple[str, ...] = ()  # substrings of the refusal message; empty: must decode
    check: Optional[Callable[[np.ndarray], None]] = None
    note: str = ""
    skip: str = ""  # non-empty: why this case cannot be checked here (e.g. root reads 000)
    either: bool = False  # damage whose outcome is the decoder's: refused clearly or decoded

    @property
    def refused(self) -> bool:
        return bool(self.says)


def _close(img: np.ndarray, ref: np.ndarray, tol: float, what: str) -> None:
    assert img.shape == ref.shape, f"{what}: shape {img.shape} != {ref.shape}"
    err = np.abs(img.astype(np.int16) - ref).mean()
    assert err <= tol, f"{what}: mean abs error {err:.2f} > {tol}"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(w: int, h: int) -> bytes:
    """A valid-looking PNG whose IHDR declares w x h RGB, with a tiny (garbage) IDAT."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_with_size(jpeg: bytes, w: int, h: int) -> bytes:
    """Rewrite the SOF0 frame size of a baseline JPEG (a JPEG bomb header)."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9 :]


def _pil_bytes(img, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def build_corpus(folder) -> List[Case]:
    import cv2
    from PIL import Image

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    cases: List[Case] = []
    rgb, bgr = card_rgb(), card_bgr()
    pil = Image.fromarray(rgb)

    def put(name: str, data: bytes) -> str:
        p = root / name
        p.write_bytes(data)
        return str(p)

    good_jpeg = _pil_bytes(pil, "JPEG", quality=95)
    # -- refused -------------------------------------------------------------------------
    cases.append(Case("zero-byte", put("empty.jpg", b""), ("empty file", "0 bytes")))
    cases.append(
        Case(
            "truncated JPEG",
            put("truncated.jpg", good_jpeg[: len(good_jpeg) * 2 // 3]),
            ("complete JPEG", "truncated"),
        )
    )
    cases.append(
        Case(
            "text named .jpg",
            put("notes.jpg", b"this is not an image\nreally\n"),
            ("found text", "this is not an image"),
        )
    )
    cases.append(
        Case(
            "PDF named .png",
            put("report.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj"),
            ("PDF document",),
        )
    )
    cases.append(
        Case(
            "1x1 image",
            put("one_pixel.png", cv2.imencode(".png", bgr[:1, :1])[1].tobytes()),
            ("at least 8 px", "1x1"),
        )
    )
    cases.append(
        Case(
            "huge aspect 10000x2",
            put(
                "wide.png", cv2.imencode(".png", np.full((2, 10000, 3), 128, np.uint8))[1].tobytes()
            ),
            ("at least 8 px", "10000x2"),
        )
    )
    cases.append(
        Case(
            "PNG bomb header 100000x100000",
            put("bomb.png", png_bomb(100000, 100000)),
            ("100000x100000", "megapixels", "refused before decoding"),
        )
    )
    cases.append(
        Case(
            "JPEG bomb header 60000x60000",
            put("bomb.jpg", jpeg_with_size(good_jpeg, 60000, 60000)),
            ("60000x60000", "megapixels", "refused before decoding"),
        )
    )
    corrupt = bytearray(cv2.imencode(".png", bgr)[1].tobytes())
    idat = corrupt.index(b"IDAT")
    corrupt[idat + 8 : idat + 40] = b"\xa5" * 32  # garbage compressed data, header intact
    cases.append(
        Case("corrupt PNG data", put("corrupt.png", bytes(corrupt)), ("decodable PNG", "corrupt"))
    )
    (root / "folder.jpg").mkdir(exist_ok=True)
    cases.append(Case("directory named .jpg", str(root / "folder.jpg"), ("a directory",)))
    os.symlink(str(root / "gone.jpg"), str(root / "dangling.jpg"))
    cases.append(Case("dangling symlink", str(root / "dangling.jpg"), ("dangling symlink",)))
    os.mkfifo(str(root / "pipe.jpg"))
    cases.append(Case("FIFO named .jpg", str(root / "pipe.jpg"), ("FIFO",)))
    locked = put("locked.jpg", good_jpeg)
    os.chmod(locked, 0)
    root_reads = os.geteuid() == 0 if hasattr(os, "geteuid") else False
    cases.append(
        Case(
            "chmod 000",
            locked,
            ("permission denied",),
            skip="running as root: chmod 000 files stay readable" if root_reads else "",
        )
    )
    cases.append(Case("missing file", str(root / "no_such.jpg"), ("no such file",)))

    # -- decoded ---------------------------------------------------------------------------
    def like_card(tol: float):
        return lambda img: _close(img, bgr, tol, "card")

    deep = rgb[:, :, ::-1].astype(np.uint16) * 257 + 100  # 16-bit BGR, not a plain x257
    cases.append(
        Case(
            "16-bit PNG",
            put("deep16.png", cv2.imencode(".png", deep)[1].tobytes()),
            check=lambda img: _close(
                img, np.round(deep / 257.0).clip(0, 255), 0.0, "16-bit scaled to 8-bit"
            ),
        )
    )
    cases.append(
        Case(
            "CMYK JPEG",
            put("cmyk.jpg", _pil_bytes(pil.convert("CMYK"), "JPEG", quality=95)),
            check=like_card(6.0),
        )
    )
    rgba = np.dstack([rgb, np.full((H, W), 255, np.uint8)])
    rgba[H // 2 :, :, 3] = 0  # bottom half fully transparent (its colour must not leak)
    rgba[: H // 2, W // 2 :, 3] = 128  # top-right half transparent

    def check_rgba(img):
        assert img.shape == (H, W, 3)
        assert img[H // 2 :].max() == 0, "transparent pixels must composite to black"
        _close(img[: H // 2, : W // 2], bgr[: H // 2, : W // 2], 0.0, "opaque part")
        _close(
            img[: H // 2, W // 2 :],
            (bgr[: H // 2, W // 2 :] * (128 / 255)).round(),
            0.6,
            "half-transparent part",
        )

    cases.append(
        Case(
            "RGBA PNG", put("rgba.png", _pil_bytes(Image.fromarray(rgba), "PNG")), check=check_rgba
        )
    )
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)

    def check_gray(img):
        assert img.shape == (H, W, 3)
        assert (img[:, :, 0] == img[:, :, 1]).all() and (img[:, :, 1] == img[:, :, 2]).all()
        _close(img[:, :, 0], gray, 0.0, "gray")

    cases.append(
        Case(
            "grayscale PNG",
            put("gray.png", cv2.imencode(".png", gray)[1].tobytes()),
            check=check_gray,
        )
    )
    cases.append(
        Case(
            "grayscale JPEG",
            put("gray.jpg", cv2.imencode(".jpg", gray)[1].tobytes()),
            check=lambda img: _close(img[:, :, 0], gray, 2.0, "gray jpeg"),
        )
    )
    cases.append(Case("GIF", put("card.gif", _pil_bytes(pil, "GIF")), check=like_card(3.0)))
    cases.append(
        Case("BMP", put("card.bmp", cv2.imencode(".bmp", bgr)[1].tobytes()), check=like_card(0.0))
    )
    cases.append(
        Case(
            "WebP lossless",
            put("card.webp", _pil_bytes(pil, "WEBP", lossless=True)),
            check=like_card(0.0),
        )
    )
    inverse = Image.fromarray(255 - rgb)
    cases.append(
        Case(
            "TIFF multi-page (first page)",
            put("pages.tif", _pil_bytes(pil, "TIFF", save_all=True, append_images=[inverse])),
            check=like_card(0.0),
        )
    )
    palette = pil.convert("P")
    cases.append(
        Case(
            "palette PNG",
            put("palette.png", _pil_bytes(palette, "PNG")),
            check=lambda img: _close(
                img, np.asarray(palette.convert("RGB"))[:, :, ::-1], 0.0, "palette"
            ),
        )
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"

    def check_rotated(img):
        assert img.shape == (W, H, 3), f"EXIF orientation 6 not applied: shape {img.shape}"
        _close(img, np.rot90(bgr, k=-1), 3.0, "rotated card")
        assert img[:8, -8:, 1].mean() > 150, "the green corner must move to the top-right"

    cases.append(
        Case(
            "EXIF-rotated JPEG",
            put("rotated.jpg", _pil_bytes(pil, "JPEG", quality=95, exif=exif)),
            check=check_rotated,
        )
    )
    cases.append(
        Case(
            "image named .txt",
            put("actually_png.txt", cv2.imencode(".png", bgr)[1].tobytes()),
            check=like_card(0.0),
            note="explicit files are sniffed, not judged by name",
        )
    )
    for name, path, expect in build_families(root / "families"):
        if expect == "refused":
            cases.append(Case(name, path, ("found",)))
        elif expect == "either":
            cases.append(Case(name, path, either=True))
        else:
            cases.append(Case(name, path, check=lambda img: None))
    assert tuple(c.name for c in cases) == CASE_NAMES, "keep CASE_NAMES in step"
    return cases


def mixed_folder(folder) -> Tuple[List[str], List[str]]:
    """A folder tree with images and non-images: (image paths, non-image paths)."""
    import cv2

    root = Path(folder)
    (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    images, others = [], []
    for i, rel in enumerate(["a.png", "sub/b.jpg", "sub/deeper/c.bmp", "sub/D.JPEG"]):
        p = root / rel
        img = np.full((40, 40, 3), 40 * i, np.uint8)
        p.write_bytes(
            cv2.imencode(p.suffix.lower() if p.suffix.lower() != ".jpeg" else ".jpg", img)[
                1
            ].tobytes()
        )
        images.append(str(p))
    for rel, data in [
        ("README.txt", b"notes"),
        ("sub/labels.csv", b"a,b\n"),
        ("sub/deeper/model.onnx", b"\x08\x01"),
    ]:
        (root / rel).write_bytes(data)
        others.append(str(root / rel))
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: ignored silently
    return sorted(images), sorted(others)
