"""Video files read so that every frame is accounted for, damaged or not.

OpenCV's sequential ``read()`` cannot tell a damaged file from its end, and where packets are
lost it numbers the frames after the damage as if nothing had happened (its position, PTS and
even its seeks count frames returned): random bytes in the middle of an AVI ended the stream at
half its frames; a run of zeros shifted every later frame number. :class:`FileFrames`:

* at open counts the container's packets without decoding (``CAP_PROP_FORMAT = -1``) against
  the header's frame count: all there -> OpenCV's sequential reads, numbered by count;
* a damaged file (fewer packets, or a read error before the header's count) that is an MJPEG
  AVI is read frame by frame through its own index (``idx1``: where each frame's JPEG is):
  frame ``i`` is the ``i``-th index entry decoded with OpenCV, a frame whose bytes no longer
  decode is lost, and every other frame keeps its true number;
* any other damaged file goes on with sequential reads past read errors (up to ``PROBE`` in a
  row) and the frames missing at the end are counted as lost (after the damage OpenCV's numbers
  may be shifted for those containers: the summary says so).

``lost`` lists the frame numbers that could not be read; ``position`` is the number of the
last frame returned.
"""

from __future__ import annotations

import os
import struct
from typing import List, Optional, Tuple

import numpy as np

PROBE = 64  # consecutive unreadable frames before probing ahead in steps of this many


def count_packets(path: str) -> Optional[int]:
    """Packets of the video stream, read without decoding (None where the backend cannot)."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened() or not cap.set(cv2.CAP_PROP_FORMAT, -1):
            return None
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def avi_index(path: str) -> Optional[List[Tuple[int, int]]]:
    """(absolute offset, size) of every frame of stream 0 from an AVI's idx1 (or, without
    one, e.g. a truncated file, from walking the 'movi' list up to the damage), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
                return None
            size = os.fstat(f.fileno()).st_size
            movi, pos = None, 12
            while pos + 8 <= size:
                f.seek(pos)
                ck = f.read(12)
                cid, n = ck[:4], struct.unpack("<I", ck[4:8])[0]
                if cid == b"LIST" and ck[8:12] == b"movi":
                    movi = pos + 8
                elif cid == b"idx1" and movi is not None:
                    raw = f.read(n - 4 if n >= 4 else 0)
                    raw = ck[8:12] + raw
                    ent = np.frombuffer(raw[: len(raw) // 16 * 16], dtype="<u4").reshape(-1, 4)
                    ids = ent[:, 0].tobytes()
                    keep = [
                        i for i in range(len(ent)) if ids[4 * i : 4 * i + 4] in (b"00dc", b"00db")
                    ]
                    if not keep:
                        return None
                    off = ent[keep, 2].astype(np.int64)
                    base = movi if off[0] < movi else 0  # relative to "movi", or absolute
                    return [(int(o) + base + 8, int(z)) for o, z in zip(off, ent[keep, 3])]
                pos += 8 + n + (n & 1)
            return _walk_movi(f, movi, size) if movi is not None else None
    except (OSError, struct.error, ValueError):
        return None


def _walk_movi(f, movi: int, size: int) -> Optional[List[Tuple[int, int]]]:
    out, pos = [], movi + 4
    while pos + 8 <= size:
        f.seek(pos)
        ck = f.read(8)
        cid, n = ck[:4], struct.unpack("<I", ck[4:8])[0]
        if cid in (b"00dc", b"00db"):
            out.append((pos + 8, n))
        elif cid == b"LIST":
            n = 4  # a 'rec ' list: step inside it
        elif not cid.isalnum():
            break  # damage: what follows cannot be placed
        pos += 8 + n + (n & 1)
    return out or None


class FileFrames:
    """Frame accounting over an open ``cv2.VideoCapture`` of a file."""

    def __init__(self, path: str, cap):
        import cv2

        self.path = path
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.count: Optional[int] = int(count) if count and count > 0 else None
        self.mjpeg = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") in (b"MJPG", b"mjpg")
        packets = count_packets(path) if self.count else None
        self.damaged = bool(self.count and packets is not None and packets < self.count)
        self.packets = packets
        self.lost: List[int] = []
        self.position: Optional[int] = None
        self._index = None
        if self.damaged:
            self._use_index()

    def _use_index(self) -> None:
        self.damaged = True
        if self._index is None and self.mjpeg:
            self._index = avi_index(self.path) or []

    def read(self, cap, pos: int) -> Tuple[Optional[np.ndarray], int]:
        """(frame or None at the end, the next position). ``pos``: the next frame number."""
        if self.damaged and self._index:
            return self._index_read(pos)
        misses = 0
        while True:
            ok, frame = cap.read()
            if ok:
                self.position = pos
                return frame, pos + 1
            if self.count is None or pos >= self.count:
                return None, pos
            self._use_index()  # a read error before the end: not the end
            if self._index:
                return self._index_read(pos)
            misses += 1
            if misses >= PROBE:
                self.lost.extend(range(pos, self.count))
                return None, self.count

    def skip(self, cap, pos: int) -> Tuple[bool, int]:
        """Pass one frame (``--stride``)."""
        if self.damaged and self._index:
            n = self.count if self.count is not None else len(self._index)
            if len(self._index) <= pos < n:
                self.lost.extend(range(pos, n))
                return False, n
            return pos < n, pos + 1
        if cap.grab():
            return True, pos + 1
        frame, nxt = self.read(cap, pos)
        return frame is not None, nxt

    def _index_read(self, pos: int) -> Tuple[Optional[np.ndarray], int]:
        import cv2

        n = self.count if self.count is not None else len(self._index)
        with open(self.path, "rb") as f:
            for i in range(pos, n):
                if i >= len(self._index):  # beyond what the file still holds (truncated)
                    self.lost.extend(range(i, n))
                    break
                off, size = self._index[i]
                f.seek(off)
                data = f.read(size)
                img = (
                    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                    if len(data) == size and size > 0
                    else None
                )
                if img is not None:
                    self.position = i
                    return img, i + 1
                self.lost.append(i)
        return None, n
