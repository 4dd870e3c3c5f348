"""Bank files checked byte by byte before a native loader sees them.

hnswlib trusts its input: a neighbour count or id out of range, an entry point on the wrong
level, or a header whose sizes disagree is a read outside its buffers (a segmentation fault),
and ``M=0`` or a changed link loads without complaint. :func:`check_hnsw_file` parses the whole
file the way ``HierarchicalNSW::loadIndex`` / ``saveIndex`` (hnswlib 0.7-0.8) lay it out::

    header (96 bytes, little endian)
      offsetLevel0 u64 | max_elements u64 | cur_element_count u64 | size_data_per_element u64
      label_offset u64 | offsetData u64 | maxlevel i32 | enterpoint_node u32
      maxM u64 | maxM0 u64 | M u64 | mult f64 | ef_construction u64
    level 0: cur_element_count records of size_data_per_element bytes
      link count u16 | delete flag u8 | unused u8 | maxM0 neighbour ids u32
      | dim float32 (the vector) | label u64
    upper levels, per element: size u32 (level x (4 + 4 maxM) bytes) then per level
      link count u16 | flags u16 | maxM neighbour ids u32

and checks every size against the file length and the manifest, every neighbour count against
its maximum, every neighbour id against the element count (and, on upper levels, against the
neighbour's own level), the entry point against the top level, labels as a permutation of
0..n-1 and the vectors as finite. Whatever passes is memory-safe to search. A changed link that
still names a valid neighbour of the right level is safe but not detectable from the structure:
the manifest's sha256 catches it, and a signature (``dn2 sign``) makes that digest trustworthy.

:func:`check_npy_file` reads a ``.npy`` header (no pickle, no data) and checks dtype, order,
shape and length against the manifest before numpy allocates anything.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zipfile
from typing import Dict, Optional

import numpy as np

from .errors import Dn2Error

HNSW_HEADER = struct.Struct("<QQQQQQiIQQQdQ")  # 96 bytes, hnswlib saveIndex order
MAX_M = 10_000  # hnswlib caps M here
_CHUNK = 1 << 16  # level-0 rows checked per step (bounded memory at any bank size)


class BankFileError(Dn2Error):
    """A bank file is not what its manifest says (damaged, crafted or of another format)."""


def _fail(name: str, msg: str) -> None:
    raise BankFileError(f"{name}: {msg}")


def _regular_size(path, name: str, what: str) -> int:
    try:
        st = os.stat(path)
    except OSError as exc:
        _fail(name, f"expected {what}, found {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        _fail(
            name,
            f"expected {what} as a regular file, found "
            f"{'a FIFO' if stat.S_ISFIFO(st.st_mode) else 'a special file'}",
        )
    return st.st_size


def hnsw_header(path, name: Optional[str] = None) -> Dict:
    """The 96-byte hnswlib header as a dict (no check beyond its length)."""
    name = name or os.path.basename(str(path))
    size = _regular_size(path, name, "an hnswlib index")
    with open(path, "rb") as f:
        raw = f.read(HNSW_HEADER.size)
    if len(raw) < HNSW_HEADER.size:
        _fail(
            name,
            f"expected an hnswlib index (a {HNSW_HEADER.size}-byte header at least), "
            f"found {len(raw)} bytes",
        )
    keys = (
        "offset_level0",
        "max_elements",
        "n",
        "size_per_element",
        "label_offset",
        "data_offset",
        "maxlevel",
        "enterpoint",
        "maxM",
        "maxM0",
        "M",
        "mult",
        "ef_construction",
    )
    head = dict(zip(keys, HNSW_HEADER.unpack(raw)))
    head["file_size"] = size
    return head


def check_hnsw_file(
    path,
    dim: int,
    n: Optional[int] = None,
    M: Optional[int] = None,
    ef_construction: Optional[int] = None,
    name: Optional[str] = None,
) -> Dict:
    """Validate an hnswlib index file completely; returns its header. Raises BankFileError."""
    name = name or os.path.basename(str(path))
    h = hnsw_header(path, name)
    size, cnt, m_ = h["file_size"], h["n"], h["M"]

    def want(cond: bool, msg: str) -> None:
        if not cond:
            _fail(name, f"not a consistent hnswlib index: {msg}")

    want(h["offset_level0"] == 0, f"expected offsetLevel0 0, found {h['offset_level0']}")
    want(2 <= m_ <= MAX_M, f"expected M in [2, {MAX_M}], found M={m_}")
    want(
        h["maxM"] == m_ and h["maxM0"] == 2 * m_,
        f"expected maxM={m_} and maxM0={2 * m_} (from M), found {h['maxM']} and {h['maxM0']}",
    )
    want(
        math.isclose(h["mult"], 1.0 / math.log(m_), rel_tol=1e-9),
        f"expected the level multiplier 1/ln(M)={1.0 / math.log(m_):.6g}, found {h['mult']!r}",
    )
    want(
        h["data_offset"] == 4 + 4 * h["maxM0"],
        f"expected the vector at byte {4 + 4 * h['maxM0']} of each element, found "
        f"{h['data_offset']}",
    )
    found_dim = (h["label_offset"] - h["data_offset"]) / 4
    want(found_dim == dim, f"expected dim {dim}, found room for {found_dim:g} floats")
    want(
        h["size_per_element"] == h["label_offset"] + 8,
        f"expected {h['label_offset'] + 8} bytes per element, found {h['size_per_element']}",
    )
    if n is not None:
        want(cnt == n, f"manifest says n={n}, the file holds {cnt} elements")
    want(cnt >= 1, "expected at least one element, found 0")
    want(
        cnt <= h["max_elements"],
        f"expected cur_element_count <= max_elements {h['max_elements']}, found {cnt}",
    )
    if M is not None:
        want(m_ == M, f"manifest says M={M}, found M={m_}")
    if ef_construction is not None:
        want(
            h["ef_construction"] == ef_construction,
            f"manifest says ef_construction={ef_construction}, found {h['ef_construction']}",
        )
    want(0 <= h["maxlevel"] <= 64, f"expected a top level in [0, 64], found {h['maxlevel']}")
    want(h["enterpoint"] < cnt, f"expected the entry point < {cnt}, found {h['enterpoint']}")
    level0_end = HNSW_HEADER.size + cnt * h["size_per_element"]
    want(level0_end <= size, f"expected {level0_end} bytes of level-0 data, the file has {size}")
    _check_level0(path, h, want)
    levels = _check_upper(path, h, want)
    want(
        int(levels.max()) == h["maxlevel"],
        f"header says top level {h['maxlevel']}, elements reach {int(levels.max())}",
    )
    want(
        levels[h["enterpoint"]] == h["maxlevel"],
        f"the entry point {h['enterpoint']} is on level {levels[h['enterpoint']]}, expected "
        f"the top level {h['maxlevel']}",
    )
    return h


def _check_level0(path, h: Dict, want) -> None:
    cnt, per, m0 = h["n"], h["size_per_element"], h["maxM0"]
    d0, lo = h["data_offset"], h["label_offset"]
    rows = np.memmap(path, dtype=np.uint8, mode="r", offset=HNSW_HEADER.size, shape=(cnt, per))
    seen = np.zeros(cnt, bool)
    slots = np.arange(m0)
    for a in range(0, cnt, _CHUNK):
        r = np.array(rows[a : a + _CHUNK])
        k = r[:, 0:2].copy().view("<u2")[:, 0]
        bad = np.flatnonzero(k > m0)
        want(
            bad.size == 0,
            f"element {a + bad[0] if bad.size else 0} has "
            f"{k[bad[0]] if bad.size else 0} level-0 links, at most {m0} allowed",
        )
        want(not r[:, 2:4].any(), "expected no deleted or flagged elements, found some")
        ids = r[:, 4:d0].copy().view("<u4")
        used = slots[None, :] < k[:, None]
        own = np.arange(a, a + r.shape[0], dtype=np.int64)[:, None]
        out = used & ((ids >= cnt) | (ids == own))
        if out.any():
            i, j = np.argwhere(out)[0]
            want(
                False,
                f"element {a + i} links to {ids[i, j]} on level 0 (expected another "
                f"element id < {cnt})",
            )
        vec = r[:, d0:lo].copy().view("<f4")
        want(bool(np.isfinite(vec).all()), "expected finite vectors, found NaN or inf")
        lab = r[:, lo : lo + 8].copy().view("<u8")[:, 0]
        want(bool((lab < cnt).all()), f"expected labels < {cnt}, found {int(lab.max())}")
        want(not seen[lab].any(), "expected each label once, found a repeated label")
        seen[lab] = True
        if len(np.unique(lab)) != lab.size:
            want(False, "expected each label once, found a repeated label")
    want(bool(seen.all()), f"expected labels 0..{cnt - 1}, some are missing")


def _check_upper(path, h: Dict, want) -> np.ndarray:
    cnt, size, maxm = h["n"], h["file_size"], h["maxM"]
    block = 4 + 4 * maxm
    levels = np.zeros(cnt, np.int64)
    spans = []
    with open(path, "rb") as f:
        f.seek(HNSW_HEADER.size + cnt * h["size_per_element"])
        pos = f.tell()
        buf = f.read()  # the upper-level part: small (about n / M elements have one)
    off = 0
    for i in range(cnt):
        want(
            off + 4 <= len(buf),
            f"the file ends inside the link lists (element {i} of {cnt}, file of {size} bytes)",
        )
        (ln,) = struct.unpack_from("<I", buf, off)
        off += 4
        if ln:
            want(
                ln % block == 0,
                f"element {i}: link list of {ln} bytes, expected a multiple of {block}",
            )
            want(off + ln <= len(buf), f"element {i}: link list runs past the end of the file")
            levels[i] = ln // block
            spans.append((i, off))
            off += ln
    want(
        off == len(buf),
        f"expected the file to end after the link lists (byte {pos + off}), "
        f"found {len(buf) - off} more bytes",
    )
    for i, start in spans:
        lv = int(levels[i])
        want(
            lv <= h["maxlevel"],
            f"element {i} is on level {lv}, above the top level {h['maxlevel']}",
        )
        blk = np.frombuffer(buf, "<u4", count=lv * (maxm + 1), offset=start).reshape(lv, maxm + 1)
        for li in range(lv):
            k = int(blk[li, 0] & 0xFFFF)
            want(k <= maxm, f"element {i} has {k} links on level {li + 1}, at most {maxm}")
            ids = blk[li, 1 : 1 + k]
            ok = (ids < cnt) & (ids != i)
            ok[ok] &= levels[ids[ok]] >= li + 1
            if not ok.all():
                want(
                    False,
                    f"element {i} links to {int(ids[~ok][0])} on level {li + 1} "
                    f"(expected another element of that level)",
                )
    return levels


def check_npy_file(path, n: Optional[int], dim: Optional[int], name: Optional[str] = None) -> None:
    """A .npy bank: float32 C-order [n, dim], the file exactly as long as the header says."""
    name = name or os.path.basename(str(path))
    size = _regular_size(path, name, "a numpy .npy file")
    if zipfile.is_zipfile(path):
        _fail(name, "expected a numpy .npy array file, found a zip archive (an .npz?)")
    from numpy.lib import format as npf

    try:
        with open(path, "rb") as f:
            major, _ = npf.read_magic(f)
            reader = npf.read_array_header_1_0 if major == 1 else npf.read_array_header_2_0
            shape, fortran, dtype = reader(f, max_header_size=10_000)
            data_at = f.tell()
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises tokenizer errors too
        _fail(
            name,
            f"expected a numpy .npy array file, found an unreadable header "
            f"({type(exc).__name__}: {str(exc)[:80]})",
        )
    if dtype != np.dtype("<f4") or fortran or len(shape) != 2:
        _fail(
            name,
            f"expected a float32 [N, D] C-order array, found {dtype} {shape}"
            f"{' Fortran-order' if fortran else ''}",
        )
    if n is not None and shape[0] != n or dim is not None and shape[1] != dim:
        _fail(name, f"manifest says [{n}, {dim}], the file declares {list(shape)}")
    need = data_at + 4 * shape[0] * shape[1]
    if need != size:
        _fail(
            name,
            f"header declares {list(shape)} float32 ({need} bytes with the header), "
            f"the file has {size} bytes",
        )
