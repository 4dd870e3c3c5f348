"""Read what an image file says about itself, without decoding it.

``sniff(data)`` recognises JPEG, PNG, GIF, BMP, WebP, TIFF and PNM by their magic bytes and
parses the declared width and height from the header (PNG IHDR, JPEG SOF, GIF logical screen,
BMP DIB header, WebP VP8/VP8L/VP8X, TIFF IFD0, PNM text header). ``images.read_image`` uses
this to refuse a decompression bomb *before* OpenCV allocates the pixel buffer, to find the
EXIF orientation (OpenCV's ``IMREAD_UNCHANGED`` ignores it) and to notice a truncated JPEG
(libjpeg fills a cut-off scan with grey and only warns, so OpenCV returns a "valid" image).

Pure Python on bytes; every read is bounds-checked, a malformed header gives ``None`` fields,
never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

# JPEG start-of-frame markers carrying the frame size (not DHT C4, JPG C8, DAC CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class Header:
    format: str  # "JPEG", "PNG", "GIF", "BMP", "WebP", "TIFF", "PNM"
    width: Optional[int] = None  # as stored, before EXIF orientation
    height: Optional[int] = None
    orientation: int = 1  # EXIF 1..8 the caller must still apply (1: nothing to do)
    complete: Optional[bool] = None  # JPEG only: end-of-image marker after the scan data

    @property
    def pixels(self) -> Optional[int]:
        if self.width is None or self.height is None:
            return None
        return self.width * self.height


def _u16(b: bytes, i: int, le: bool) -> int:
    return struct.unpack_from("<H" if le else ">H", b, i)[0]


def _u32(b: bytes, i: int, le: bool) -> int:
    return struct.unpack_from("<I" if le else ">I", b, i)[0]


def _tiff_ifd0(t: bytes, tags: Tuple[int, ...]) -> dict:
    """Values of the wanted SHORT/LONG tags in IFD0 of a TIFF structure (also EXIF's)."""
    found: dict = {}
    if len(t) < 8 or t[:2] not in (b"II", b"MM"):
        return found
    le = t[:2] == b"II"
    try:
        if _u16(t, 2, le) != 42:
            return found
        ifd = _u32(t, 4, le)
        n = _u16(t, ifd, le)
        for k in range(min(n, 512)):
            e = ifd + 2 + 12 * k
            tag, typ = _u16(t, e, le), _u16(t, e + 2, le)
            if tag in tags:
                if typ == 3:  # SHORT, left-justified in the value field
                    found[tag] = _u16(t, e + 8, le)
                elif typ == 4:  # LONG
                    found[tag] = _u32(t, e + 8, le)
    except struct.error:
        pass  # truncated IFD: keep what was read
    return found


def exif_orientation(tiff_block: bytes) -> int:
    """EXIF orientation (1..8) from a TIFF-structured EXIF block; 1 when absent or invalid."""
    if tiff_block[:6] == b"Exif\x00\x00":
        tiff_block = tiff_block[6:]
    o = _tiff_ifd0(tiff_block, (_ORIENTATION_TAG,)).get(_ORIENTATION_TAG, 1)
    return o if 1 <= o <= 8 else 1


def _jpeg(b: bytes) -> Header:
    w = h = None
    orientation = 1
    i, n = 2, len(b)
    sos = -1
    while i + 4 <= n:
        if b[i] != 0xFF:
            break  # not at a marker: corrupt segment structure
        m = b[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        if m == 0xD9:
            break
        seg_len = _u16(b, i + 2, False)
        if m == 0xDA:
            sos = i
            break
        if m in _SOF and i + 9 <= n:
            h, w = _u16(b, i + 5, False), _u16(b, i + 7, False)
        elif m == 0xE1 and b[i + 4 : i + 10] == b"Exif\x00\x00" and orientation == 1:
            orientation = exif_orientation(b[i + 10 : i + 2 + seg_len])
        i += 2 + seg_len
    # The scan data may hold RSTn markers and stuffed FF00, never FFD9, so the real end marker
    # is the last FFD9 after the first scan (bytes after it are tolerated, as libjpeg does).
    complete = sos >= 0 and b.rfind(b"\xff\xd9") > sos
    return Header("JPEG", w, h, orientation, complete)


def _png(b: bytes) -> Header:
    if len(b) < 24 or b[12:16] != b"IHDR":
        return Header("PNG")
    w, h = _u32(b, 16, False), _u32(b, 20, False)
    orientation, i = 1, 8
    while i + 8 <= len(b):  # chunk walk: jumps by length, reads no pixel data
        length, ctype = _u32(b, i, False), b[i + 4 : i + 8]
        if ctype == b"eXIf":
            orientation = exif_orientation(b[i + 8 : i + 8 + length])
            break
        if ctype == b"IEND":
            break
        i += 12 + length
    return Header("PNG", w, h, orientation)


def _webp(b: bytes) -> Header:
    w = h = None
    orientation, i = 1, 12
    while i + 8 <= len(b):
        fourcc, size = b[i : i + 4], _u32(b, i + 4, True)
        d = i + 8
        if fourcc == b"VP8 " and d + 10 <= len(b) and b[d + 3 : d + 6] == b"\x9d\x01\x2a":
            w, h = _u16(b, d + 6, True) & 0x3FFF, _u16(b, d + 8, True) & 0x3FFF
        elif fourcc == b"VP8L" and d + 5 <= len(b) and b[d] == 0x2F:
            bits = _u32(b, d + 1, True)
            w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif fourcc == b"VP8X" and d + 10 <= len(b):
            w = (b[d + 4] | b[d + 5] << 8 | b[d + 6] << 16) + 1
            h = (b[d + 7] | b[d + 8] << 8 | b[d + 9] << 16) + 1
        elif fourcc == b"EXIF":
            orientation = exif_orientation(b[d : d + size])
        i = d + size + (size & 1)
    return Header("WebP", w, h, orientation)


def _tiff(b: bytes) -> Header:
    tags = _tiff_ifd0(b, (256, 257))
    # OpenCV's TIFF decoder applies the TIFF Orientation tag itself (libtiff RGBA path), also
    # with IMREAD_UNCHANGED (checked: tests/test_images.py), so nothing is left to the caller.
    return Header("TIFF", tags.get(256), tags.get(257), 1)


def _bmp(b: bytes) -> Header:
    if len(b) < 26:
        return Header("BMP")
    if _u32(b, 14, True) == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return Header("BMP", _u16(b, 18, True), _u16(b, 20, True))
    w, h = struct.unpack_from("<ii", b, 18)
    return Header("BMP", abs(w), abs(h))  # negative height: top-down rows


def _pnm(b: bytes) -> Header:
    tokens, i, n = [], 2, min(len(b), 4096)
    while len(tokens) < 2 and i < n:
        c = b[i : i + 1]
        if c == b"#":
            j = b.find(b"\n", i, n)
            i = n if j < 0 else j + 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < n and not b[j : j + 1].isspace() and b[j : j + 1] != b"#":
                j += 1
            tokens.append(b[i:j])
            i = j
    try:
        return Header("PNM", int(tokens[0]), int(tokens[1]))
    except (IndexError, ValueError):
        return Header("PNM")


def sniff(data) -> Optional[Header]:
    """The header of an image in ``data`` (bytes-like), or None if no known magic matches."""
    b = data if isinstance(data, bytes) else bytes(data)
    try:
        if b[:3] == b"\xff\xd8\xff":
            return _jpeg(b)
        if b[:8] == b"\x89PNG\r\n\x1a\n":
            return _png(b)
        if b[:6] in (b"GIF87a", b"GIF89a") and len(b) >= 10:
            return Header("GIF", _u16(b, 6, True), _u16(b, 8, True))
        if b[:2] == b"BM":
            return _bmp(b)
        if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
            return _webp(b)
        if b[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(b)
        if len(b) > 2 and b[:1] == b"P" and b[1:2] in b"123456" and b[2:3].isspace():
            return _pnm(b)
    except struct.error:
        pass
    return None


def describe_unknown(b: bytes) -> str:
    """A short human description of data that is not a known image (for error messages)."""
    if not b:
        return "an empty file (0 bytes)"
    for magic, what in (
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x1f\x8b", "gzip data"),
        (b"\x7fELF", "an ELF executable"),
        (b"<?xml", "XML text"),
        (b"<svg", "an SVG drawing (vector, not decoded)"),
    ):
        if b.startswith(magic):
            return what
    head = b[:64]
    printable = sum(32 <= c < 127 or c in (9, 10, 13) for c in head)
    if printable >= 0.95 * len(head):
        text = head.decode("ascii", "replace").split("\n")[0][:40]
        return f"text ({text!r}...)"
    return f"unrecognised data starting with {head[:8].hex(' ')}"
