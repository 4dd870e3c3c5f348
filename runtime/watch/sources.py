"""Frame sources for dn2-watch, all through OpenCV.

A source is opened, read frame by frame, and closed. ``read()`` returns a BGR uint8 frame, or
``None`` at a clean end of stream (end of file, end of folder). A failure of the stream itself
raises :class:`SourceFailure`; the reader then reconnects (``close()`` + ``open()``) with a
bounded exponential backoff. ``live`` sources (cameras, network streams, GStreamer pipelines,
files replayed in real time) may drop frames when the scorer lags; file-like sources never do.

Spec strings accepted by :func:`open_source`:

* ``"0"``, ``"1"`` ...            camera index (V4L2 / the OS default backend)
* ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://`` URLs   network streams
* a string containing ``" ! "`` with an ``appsink``                      GStreamer pipeline
* a folder                                                              its images, sorted, as a stream
  (:class:`dn2.runtime.watch.foldersource.FolderSource`)
* any other path                                                        a video file
"""

from __future__ import annotations

import os
import re
import time
from typing import List, Optional, Union

import numpy as np

from ..errors import Dn2Error
from ..paths import found

# Network streams: give up opening after 10 s and a read after 5 s without a frame (OpenCV's
# FFmpeg default is 30 s each), so a frozen camera is noticed and reconnected promptly.
URL_OPEN_TIMEOUT_MS = 10_000
URL_READ_TIMEOUT_MS = 5_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.IGNORECASE)


class SourceError(Dn2Error):
    """A source cannot be opened (wrong path, no camera, unsupported backend, ...)."""


class SourceFailure(Dn2Error):
    """A source that was open stopped delivering frames mid-stream (not a clean end)."""


class ItemSkipped(Dn2Error):
    """One item of the source (a folder's image) cannot be used and was passed over; the
    source goes on with the next. The reader counts it as a frame number, never a frame."""

    def __init__(self, message: str, item: str = ""):
        super().__init__(message)
        self.item = item


def as_bgr(frame) -> Optional[np.ndarray]:
    """A decoded frame as HxWx3 uint8 BGR, or ``None`` when it is not a usable picture.

    Grayscale and BGRA frames are converted; anything empty, of another dtype or shape is
    refused (a failed read must never turn into a scored placeholder frame).
    """
    import cv2

    if not isinstance(frame, np.ndarray) or frame.size == 0 or frame.dtype != np.uint8:
        return None
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[0] < 2 or frame.shape[1] < 2:
        return None
    if frame.shape[2] == 3:
        return frame
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    return None


class Source:
    """Base class. Subclasses set ``name`` and ``live`` and implement the four methods."""

    name: str = "source"
    live: bool = False

    def open(self) -> None:  # raises SourceError
        raise NotImplementedError

    def read(self) -> Optional[np.ndarray]:  # frame, None at end, SourceFailure on failure
        raise NotImplementedError

    def skip(self) -> bool:
        """Advance one frame without returning it (used for ``--stride``); False at the end."""
        return self.read() is not None

    def drop_current(self) -> Optional[str]:
        """Pass over the item that keeps failing, where the source can (folders); else None."""
        return None

    @property
    def position(self) -> Optional[int]:
        """The source's own number of the frame last read, where it knows it (files)."""
        return None

    @property
    def lost_frames(self) -> List[int]:
        """Frame numbers the source could not read (a damaged file); counted, never faked."""
        return []

    def close(self) -> None:
        raise NotImplementedError

    @property
    def fps(self) -> Optional[float]:
        """Frames per second of the source's own clock, when known (files); else None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, live={self.live})"


def gstreamer_available() -> bool:
    import cv2

    info = cv2.getBuildInformation()
    m = re.search(r"GStreamer:\s*(\S+)", info)
    return bool(m) and m.group(1).upper() != "NO"


class CaptureSource(Source):
    """cv2.VideoCapture over a camera index, a URL, a GStreamer pipeline or a video file.

    ``realtime=True`` replays a file at its own frame rate as a live source (a stand-in for a
    camera: frames arrive on the source's clock whether or not the scorer keeps up).
    """

    def __init__(self, spec: Union[str, int], kind: str, live: bool, realtime: bool = False):
        self.spec, self.kind = spec, kind
        self.live = bool(live or realtime)
        self.realtime = bool(realtime)
        self.name = f"camera {spec}" if kind == "camera" else str(spec)
        self._cap = None
        self._pos = 0  # frames delivered since the file start (for reopen + seek)
        self._t0: Optional[float] = None
        self._fps: Optional[float] = None
        self._frames = None  # FileFrames of a file: true frame numbers, lost frames
        self._raw_jpeg = False  # an MJPEG stream read as JPEG packets
        self.partial_frames = 0  # incomplete JPEGs of a stream, never scored

    @property
    def position(self) -> Optional[int]:
        return self._frames.position if self._frames is not None else None

    @property
    def lost_frames(self) -> List[int]:
        return self._frames.lost if self._frames is not None else []

    def open(self) -> None:
        import cv2

        if self.kind == "gstreamer":
            if not gstreamer_available():
                raise SourceError(
                    f"cannot open GStreamer pipeline {self.spec!r}: this OpenCV build has no "
                    "GStreamer support (cv2.getBuildInformation() reports 'GStreamer: NO'); "
                    "use an OpenCV built with GStreamer (on Jetson: the JetPack OpenCV)"
                )
            cap = cv2.VideoCapture(str(self.spec), cv2.CAP_GSTREAMER)
        elif self.kind == "camera":
            index = int(str(self.spec).strip())
            if not 0 <= index < 10_000:  # OpenCV takes a C int; real indices are small
                raise SourceError(
                    f"source {self.spec}: expected a camera index in [0, 9999], found {index}",
                    param="source",
                )
            cap = cv2.VideoCapture(index)
        elif self.kind == "url":
            cap = cv2.VideoCapture(
                str(self.spec),
                cv2.CAP_FFMPEG,
                [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    URL_OPEN_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    URL_READ_TIMEOUT_MS,
                ],
            )
        else:
            what = found(self.spec)
            if self.kind == "file" and what != "a regular file":
                raise SourceError(
                    f"source {self.spec!r}: expected a video file, a folder "
                    "of images, a camera index, a stream URL or a GStreamer "
                    f"pipeline, found {what}",
                    param="source",
                )
            cap = cv2.VideoCapture(str(self.spec))
        if not cap.isOpened():
            cap.release()
            what = {
                "camera": f"camera index {self.spec} (no such device, or it is busy)",
                "url": f"stream {self.spec!r} (unreachable, wrong URL or unsupported codec)",
                "gstreamer": f"GStreamer pipeline {self.spec!r} (it must end in an appsink)",
                "file": f"video file {self.spec!r} (not a video OpenCV can decode)",
            }[self.kind]
            raise SourceError(f"cannot open {what}")
        if self.kind == "file" and self._pos:
            # Reopened after a failure: continue where the stream broke, losing no frame.
            cap.set(cv2.CAP_PROP_POS_FRAMES, float(self._pos))
        if self.kind == "file" and self._frames is None:  # frame count vs packets (damage)
            from .filevideo import FileFrames

            self._frames = FileFrames(str(self.spec), cap)
        # An MJPEG stream is read as its JPEGs (no decode by FFmpeg): a frame cut off when the
        # camera drops mid-frame is seen as incomplete and never scored (partial_frames).
        self._raw_jpeg = (
            self.kind == "url"
            and int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") in (b"MJPG", b"mjpg")
            and bool(cap.set(cv2.CAP_PROP_FORMAT, -1))
        )
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if 0.0 < fps < 1000.0 else None

    def _pace(self) -> None:
        fps = self.fps
        if self.realtime and fps:
            if self._t0 is None:  # the clock starts with the first read, not at open
                self._t0 = time.monotonic() - self._pos / fps
            due = self._t0 + self._pos / fps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def read(self) -> Optional[np.ndarray]:
        if self._cap is None:
            raise SourceFailure(f"{self.name} is not open")
        self._pace()
        if self._frames is not None:  # a file: a read error is not the end (filevideo.py)
            frame, self._pos = self._frames.read(self._cap, self._pos)
            if frame is None:
                return None
        else:
            ok, frame = self._cap.read()
            if not ok:
                if self.live and not self.realtime:
                    raise SourceFailure(f"{self.name}: read failed (stream interrupted)")
                return None  # end of file
            if self._raw_jpeg:
                frame = self._jpeg(frame)
            self._pos += 1
        img = as_bgr(frame)
        if img is None:
            raise SourceFailure(
                f"{self.name}: frame {self._pos - 1} is not a picture "
                f"(shape {getattr(frame, 'shape', None)}, "
                f"dtype {getattr(frame, 'dtype', None)})"
            )
        return img

    def _jpeg(self, packet) -> np.ndarray:
        """One MJPEG packet -> the decoded frame, through the guarded image reader; a JPEG
        without its end (the connection died inside it) raises SourceFailure, unscored."""
        from ..errors import ImageError
        from ..images import read_image

        data = np.asarray(packet).tobytes()
        try:
            return read_image(data, name=f"{self.name} frame {self._pos}")
        except ImageError as exc:
            self.partial_frames += 1
            raise SourceFailure(f"{self.name}: frame not scored: {exc}") from None

    def skip(self) -> bool:
        if self._cap is None:
            raise SourceFailure(f"{self.name} is not open")
        self._pace()
        if self._frames is not None:
            ok, self._pos = self._frames.skip(self._cap, self._pos)
            return ok
        if not self._cap.grab():
            if self.live and not self.realtime:
                raise SourceFailure(f"{self.name}: grab failed (stream interrupted)")
            return False
        self._pos += 1
        return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def fps(self) -> Optional[float]:
        return self._fps


def classify(spec: Union[str, int]) -> str:
    """Which kind of source a spec names: camera, url, gstreamer, folder or file."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return "camera"
    s = str(spec).strip()
    if " ! " in s or s.endswith("appsink") or "appsink " in s:
        return "gstreamer"
    if _URL.match(s):
        return "url"
    if os.path.isdir(s):
        return "folder"
    return "file"


def open_source(
    spec: Union[str, int, Source], realtime: bool = False, folder_fps: float = 10.0
) -> Source:
    """Build and open the source a spec names; raises :class:`SourceError` when it cannot."""
    if isinstance(spec, Source):
        src = spec
    else:
        kind = classify(spec)
        if kind == "folder":
            from .foldersource import FolderSource

            src = FolderSource(spec, fps=folder_fps)
        else:
            if realtime and kind != "file":
                raise SourceError(
                    f"realtime replays a video file; {spec!r} is a {kind} "
                    "source, which is live already",
                    param="realtime",
                )
            src = CaptureSource(
                spec, kind, live=kind in ("camera", "url", "gstreamer"), realtime=realtime
            )
    src.open()
    return src
