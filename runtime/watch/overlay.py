"""The overlay (score bar, threshold mark, state, FPS), the annotated video and the window."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import numpy as np

from ..errors import Dn2Error

_COLOURS = {"normal": (60, 180, 60), "arming": (0, 200, 255), "ALERT": (0, 0, 255)}


def draw(
    frame: np.ndarray,
    score: Optional[float],
    threshold: float,
    state: str,
    fps: Optional[float],
    label: str = "",
) -> np.ndarray:
    """A copy of ``frame`` with the overlay drawn on it.

    The bar spans 0 .. 2 x threshold (full = twice the threshold); a white tick marks the
    threshold in its middle. The text gives the raw score, the threshold and the normalised
    score (score / threshold, "1.22x": 1.0 is the decision boundary); ``fps`` None leaves
    the rate out (a snapshot).
    """
    import cv2

    out = frame.copy()
    h, w = out.shape[:2]
    bar_h = max(8, h // 20)
    x0, x1, y0 = 8, w - 8, h - bar_h - 8
    colour = _COLOURS.get(state, (200, 200, 200))
    cv2.rectangle(out, (x0, y0), (x1, y0 + bar_h), (40, 40, 40), -1)
    if score is not None and np.isfinite(score) and threshold > 0:
        frac = float(np.clip(score / (2.0 * threshold), 0.0, 1.0))
        cv2.rectangle(out, (x0, y0), (x0 + int(frac * (x1 - x0)), y0 + bar_h), colour, -1)
    xt = x0 + (x1 - x0) // 2
    cv2.line(out, (xt, y0 - 3), (xt, y0 + bar_h + 3), (255, 255, 255), 2)
    scale = max(0.35, min(1.0, w / 640.0))
    s_txt = text_score(score, threshold)
    rate = "" if fps is None else f"  {fps:.1f} fps"
    text = f"{state}  {s_txt}{rate} {label}".rstrip()
    thick = 1 if scale < 0.6 else 2
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(out, (4, 4), (min(w - 1, 12 + tw), 12 + th), (0, 0, 0), -1)
    cv2.putText(out, text, (8, 8 + th), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    if state == "ALERT":
        cv2.rectangle(out, (0, 0), (w - 1, h - 1), colour, max(2, w // 100))
    return out


def text_score(score: Optional[float], threshold: float) -> str:
    """``score 0.0612 / thr 0.0502 = 1.22x``: raw score, threshold, normalised score."""
    if score is None or not np.isfinite(score):
        return f"score - / thr {threshold:.3g}"
    norm = f" = {score / threshold:.2f}x" if threshold > 0 else ""
    return f"score {score:.3g} / thr {threshold:.3g}{norm}"


_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class VideoSink:
    """Writes annotated frames to a video file; opened lazily on the first frame (its size)."""

    def __init__(self, path: Union[str, Path], fps: float):
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 10.0
        suffix = self.path.suffix.lower()
        if suffix not in _FOURCC:
            raise Dn2Error(
                f"output_video {self.path}: expected a name ending in "
                f"{', '.join(sorted(_FOURCC))}, found {suffix or 'no suffix'!r}",
                param="output_video",
            )
        self._fourcc = _FOURCC[suffix]
        self._writer = None
        self._size: Optional[Tuple[int, int]] = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import cv2

        h, w = frame.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*self._fourcc), self.fps, (w, h)
            )
            if not writer.isOpened():
                raise Dn2Error(
                    f"cannot write video {self.path} with codec {self._fourcc!r} "
                    "(this OpenCV build lacks it, or the folder is not writable)"
                )
            self._writer, self._size = writer, (w, h)
        if (w, h) != self._size:  # a reconnected camera may change resolution
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def gui_available() -> Tuple[bool, str]:
    """Whether cv2.imshow can work here, and if not, why (a message for the user)."""
    import cv2

    m = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if not m or m.group(1).upper() in ("NONE", "NO"):
        return False, (
            "this OpenCV build has no GUI (opencv-python-headless); install "
            "opencv-python for a window, or pass --headless"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False, "no display (DISPLAY is not set); pass --headless"
    return True, ""


class Window:
    """An OpenCV window; pressing q or Esc in it asks the loop to stop."""

    def __init__(self, title: str, on_quit: Callable[[], None]):
        ok, why = gui_available()
        if not ok:
            raise Dn2Error(f"cannot open a window: {why}")
        self.title, self.on_quit = title, on_quit

    def show(self, frame: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.title, frame)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.on_quit()

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass
