"""Images in, model input out: decode with OpenCV, normalise, resize + centre crop.

* ``read_image(src)``: a file path or encoded bytes -> BGR uint8 HxWx3, EXIF-rotated.
  Refuses a decompression bomb from the header before anything is decoded, a JPEG cut off
  mid-scan, empty files, text or other non-images, directories, FIFOs, dangling links,
  unreadable files and images too small to be meaningful; every refusal is an ``ImageError``
  reading ``"<path>: expected ..., found ..."``.
  ``draft_side=S`` (opt-in, ``draft_side_for(rule)``) decodes a large JPEG at 1/2, 1/4 or 1/8
  scale in libjpeg's DCT domain while its shorter side stays >= S: less decode and resize work
  (measured below), at a small cost in agreement with the torchvision reference.
* ``to_bgr8(arr)``: grayscale -> 3 channels, alpha composited over black, 16-bit scaled to
  8-bit, float [0, 1] scaled to 8-bit.
* ``prepare(img, rule)``: the model's resize rule (shorter side to ``rule.resize_to``, centre
  crop ``rule.crop``), computed like torchvision's ``Resize`` + ``CenterCrop``.
* ``find_images(inputs)``: files, folders (recursive) and globs -> image paths + problems.
"""

from __future__ import annotations

import os
import stat
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np

from .errors import ImageError
from .imageheader import describe_unknown, sniff
from .modelmeta import ResizeRule
from .paths import too_long
from .resize import center_crop_resize

MAX_PIXELS = 100_000_000  # decompression-bomb limit (a 100 MP photo is the largest we expect)
MIN_SIDE = 8  # shorter side below this carries no usable texture; refused, not upscaled
MAX_FILE_BYTES = 1 << 30
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .gif .webp .tif .tiff .pbm .pgm .ppm .pnm .pxm "
    ".jp2 .avif .hdr .pic .ras .sr .pfm".split()
)
_FORMATS = "JPEG, PNG, GIF, BMP, WebP, TIFF, PNM"
# A draft-decoded JPEG keeps a shorter side >= DRAFT_MARGIN x resize_to, so the resize after it
# still shrinks (and antialiases). `python -m dn2.tools.studies.resize` (efficientnet_lite0, 45
# quality-90 JPEGs of real photos and frames; cosine of embeddings to the torchvision pipeline on
# the same files): full decode min 0.99998; draft at margin 1.0: min 0.97540 (a photo decoded
# straight to 256 px); 1.25: 25 of 45 reduced, min 0.99753, mean over those 0.99897; 1.5: only 6
# reduced (720p frames no longer are). Decode + resize (OMP_NUM_THREADS=1, CPU ms): 1280x720
# 6.15 -> 3.46, 1920x1080 12.02 -> 6.55 (libjpeg's Huffman decoding is not scaled, only the IDCT
# and colour conversion).
DRAFT_MARGIN = 1.25
_DRAFT_FLAGS = {
    8: cv2.IMREAD_REDUCED_COLOR_8,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    2: cv2.IMREAD_REDUCED_COLOR_2,
}  # scale denominator -> flag, largest first

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]


def _special(mode: int) -> str:
    return (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device or special file"
    )


def _read_file(path: str) -> bytes:
    """The file's bytes; any reason it is not a readable regular file -> ImageError.

    Opened with O_NONBLOCK and checked again with fstat on the open descriptor: a FIFO or
    device swapped in for the file between the first check and the open can never block the
    reader (opening a FIFO without a writer would wait forever)."""
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(
                f"{path}: expected a readable image file, found a dangling symlink "
                f"to {os.readlink(path)!r}"
            ) from None
        raise ImageError(f"{path}: expected an image file, found no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: expected a readable image file, found {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{path}: expected an image file, found a directory")
    if not stat.S_ISREG(st.st_mode):  # never read a FIFO/device: it could block forever
        raise ImageError(f"{path}: expected a regular image file, found {_special(st.st_mode)}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise ImageError(
            f"{path}: expected a readable image file, found permission denied "
            f"(mode {stat.filemode(st.st_mode)})"
        ) from None
    except OSError as exc:
        raise ImageError(f"{path}: expected a readable image file, found {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # what was opened, not what was there a moment ago
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(
                f"{path}: expected a regular image file, found "
                f"{_special(st.st_mode)} (swapped in after the first check)"
            )
        if st.st_size == 0:
            raise ImageError(f"{path}: expected an image file, found an empty file (0 bytes)")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageError(
                f"{path}: expected an image file of at most "
                f"{MAX_FILE_BYTES >> 20} MiB, found {st.st_size >> 20} MiB"
            )
        chunks, left = [], st.st_size + 1  # read to EOF, but never more than the size cap
        while left > 0:
            b = os.read(fd, min(left, 1 << 24))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    except OSError as exc:
        raise ImageError(f"{path}: expected a readable image file, found {exc.strerror}") from None
    finally:
        os.close(fd)


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 (the transform that makes the image display upright)."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:  # transpose
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:  # transverse
        return cv2.rotate(cv2.transpose(img), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def to_bgr8(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """Any decoded image array -> BGR uint8 HxWx3 (C-contiguous).

    Grayscale is replicated to 3 channels; an alpha channel is composited over black (so hidden
    colour under transparent pixels never reaches the model; opaque images are unchanged);
    16-bit is scaled by 255/65535 with rounding; float is read as [0, 1] and clipped.
    """
    if not isinstance(arr, np.ndarray):
        raise ImageError(f"{name}: expected a numpy image array, found {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise ImageError(f"{name}: expected an HxW, HxWx3 or HxWx4 image, found shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = cv2.convertScaleAbs(arr, alpha=255.0 / 65535.0)  # rounds and saturates
    elif arr.dtype in (np.float32, np.float64):
        arr = cv2.convertScaleAbs(np.clip(np.nan_to_num(arr), 0.0, 1.0), alpha=255.0)
    elif arr.dtype != np.uint8:
        raise ImageError(f"{name}: expected 8-bit, 16-bit or float samples, found {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        color, alpha = arr[:, :, :-1], arr[:, :, -1:]
        if alpha.min() < 255:
            color = ((color.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
        arr = color if color.shape[2] == 3 else color[:, :, 0]
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(arr)


def _check_size(name: str, w: int, h: int, max_pixels: int, min_side: int, what: str) -> None:
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: expected positive image dimensions, found {what} {w}x{h}")
    if w * h > max_pixels:
        when = "before decoding " if what.endswith("declaring") else ""
        raise ImageError(
            f"{name}: expected at most {max_pixels / 1e6:g} megapixels, found {what} {w}x{h} "
            f"({w * h / 1e6:,.1f} megapixels); refused {when}as a possible decompression bomb "
            f"(raise max_pixels to allow it)"
        )
    if min(w, h) < min_side:
        raise ImageError(
            f"{name}: expected at least {min_side} px on the shorter side, found {what} {w}x{h}"
        )


def draft_side_for(rule: ResizeRule) -> int:
    """The shorter side a draft-decoded JPEG keeps for ``rule`` (see DRAFT_MARGIN)."""
    return int(np.ceil(rule.resize_to * DRAFT_MARGIN))


def draft_scale(width: int, height: int, draft_side: int) -> int:
    """The libjpeg scale denominator (8, 4, 2, or 1 = full size) for a ``width x height`` JPEG
    whose shorter side must stay >= ``draft_side``."""
    return next((s for s in _DRAFT_FLAGS if min(width, height) / s >= draft_side), 1)


def read_image(
    src: Source,
    *,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
    name: Optional[str] = None,
    draft_side: Optional[int] = None,
) -> np.ndarray:
    """Decode an image file or encoded bytes to BGR uint8 HxWx3, upright per EXIF orientation.

    ``max_pixels`` is checked against the header before decoding (formats whose header dn2
    cannot parse, e.g. AVIF or JPEG 2000, fall back to OpenCV's own 2^30-pixel limit and are
    checked after decoding). Images with a shorter side below ``min_side`` are refused.
    ``draft_side``: decode a JPEG at the smallest libjpeg scale (1/2, 1/4, 1/8) that keeps its
    shorter side >= ``draft_side`` (other formats and small JPEGs decode at full size).
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        data = bytes(src)
        if not data:
            raise ImageError(f"{name}: expected encoded image bytes, found an empty buffer")
    else:
        name = name or str(src)
        data = _read_file(os.fspath(src))
    head = sniff(data)
    if head is not None and head.pixels is not None:
        _check_size(
            name, head.width, head.height, max_pixels, min_side, f"a {head.format} header declaring"
        )
    if head is not None and head.format == "JPEG" and not head.complete:
        raise ImageError(
            f"{name}: expected a complete JPEG (an end-of-image marker after the "
            f"scan data), found a truncated or corrupt file of {len(data)} bytes"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    # UNCHANGED keeps alpha and 16-bit samples; it also skips EXIF orientation (applied below)
    flag = cv2.IMREAD_UNCHANGED
    if draft_side and head is not None and head.format == "JPEG" and head.pixels is not None:
        scale = draft_scale(head.width, head.height, int(draft_side))
        if scale > 1:
            flag = _DRAFT_FLAGS[scale] | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        img = cv2.imdecode(buf, flag)
    except cv2.error as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "OpenCV error"
        raise ImageError(
            f"{name}: expected a decodable image, found data OpenCV refused: {msg}"
        ) from None
    if img is None:
        if head is None:
            raise ImageError(
                f"{name}: expected an image file ({_FORMATS}, ...), found {describe_unknown(data)}"
            )
        raise ImageError(
            f"{name}: expected a decodable {head.format} image, found a corrupt or "
            f"unsupported file of {len(data)} bytes (OpenCV {cv2.__version__} "
            f"could not decode it)"
        )
    if head is None or head.pixels is None:
        _check_size(name, img.shape[1], img.shape[0], max_pixels, min_side, "a decoded image of")
    img = to_bgr8(img, name)
    if head is not None and head.orientation != 1:
        img = np.ascontiguousarray(_orient(img, head.orientation))
    return img


def prepare(
    img_bgr: np.ndarray, rule: ResizeRule, *, min_side: int = MIN_SIDE, name: str = "image"
) -> np.ndarray:
    """Resize the shorter side to ``rule.resize_to`` and centre-crop ``rule.crop`` square.

    Returns a C-contiguous ``crop x crop x 3`` BGR uint8 array. Only the source region that
    maps onto the crop is resampled (see ``dn2.runtime.resize`` for the measured choice).
    """
    img = to_bgr8(img_bgr, name)
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        raise ImageError(
            f"{name}: expected at least {min_side} px on the shorter side, found {w}x{h}"
        )
    return center_crop_resize(img, rule.resize_to, rule.crop)


def _is_image_name(p: str) -> bool:
    return os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: str, files: List[str], problems: List[Tuple[str, str]]) -> None:
    def onerror(exc: OSError) -> None:
        problems.append(
            (exc.filename or folder, f"expected a readable folder, found {exc.strerror}")
        )

    for root, dirs, names in os.walk(folder, onerror=onerror, followlinks=False):
        dirs.sort()
        for n in names:
            if n.startswith("."):
                continue  # hidden files (.DS_Store, ._x.jpg resource forks) are not images
            p = os.path.join(root, n)
            if _is_image_name(n):
                files.append(p)
            else:
                ext = os.path.splitext(n)[1] or "no extension"
                problems.append(
                    (
                        p,
                        f"expected an image file ({_FORMATS}, ...), found "
                        f"a file with {ext}; skipped",
                    )
                )


def expand_inputs(inputs: List[str]) -> List[Tuple[str, Optional[str]]]:
    """Files, folders (recursive) and globs -> ``[(path, problem or None)]`` in input order.

    Each input expands in place (a folder or a glob to its sorted files), duplicates are kept:
    one entry per file named, so a caller can answer every input in the order it was given.
    A file named explicitly is kept whatever its extension (``read_image`` sniffs the content
    and reports it if it is not an image); inside folders only image extensions are collected
    and every other file is reported as a problem. Nothing here is fatal.
    """
    import glob

    out: List[Tuple[str, Optional[str]]] = []

    def walk(folder: str) -> None:
        files: List[str] = []
        problems: List[Tuple[str, str]] = []
        _walk(folder, files, problems)
        found = sorted([(f, None) for f in files] + list(problems))
        out.extend(found or [(folder, "expected image files in this folder, found none")])

    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            walk(item)
        elif os.path.lexists(item):
            out.append((item, None))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                out.append((item, "expected files matching this pattern, found none"))
            for m in matches:
                if os.path.isdir(m):
                    walk(m)
                elif _is_image_name(m):
                    out.append((m, None))
                else:
                    out.append(
                        (
                            m,
                            f"expected an image file ({_FORMATS}, ...), found a file "
                            f"with {os.path.splitext(m)[1] or 'no extension'}; skipped",
                        )
                    )
        elif too_long(item):
            out.append((item, f"expected a file, folder or glob, found {too_long(item)}"))
        else:
            out.append((item, "expected a file, folder or glob, found no such path"))
    return out


def find_images(inputs: List[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Expand files, folders (recursive) and globs into (sorted unique image paths, problems);
    see :func:`expand_inputs` for the order-keeping form."""
    items = expand_inputs(inputs)
    files = sorted({p for p, why in items if why is None})
    return files, [(p, why) for p, why in items if why is not None]


__all__ = [
    "read_image",
    "prepare",
    "find_images",
    "expand_inputs",
    "to_bgr8",
    "MAX_PIXELS",
    "MIN_SIDE",
    "IMAGE_EXTENSIONS",
]
