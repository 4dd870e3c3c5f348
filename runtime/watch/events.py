"""Alert events: JSON lines (one object per line, flushed per event) and peak-frame snapshots.

Each alert writes two lines, ``alert_start`` when it opens and ``alert_end`` when it closes,
sharing ``alert_id``. Fields::

    type          "alert_start" | "alert_end"
    alert_id      1, 2, ... within this run
    frame         source frame number the decision was taken on (group mode: window's last)
    timestamp     seconds; clock says which: "source" (frame / fps, files) or "wall" (Unix time)
    clock         "source" | "wall"
    score         score of that frame or group (alert_end on a stop / end of stream: null)
    peak_score    highest score of the alert so far, peak_frame its frame
    threshold     the threshold in force
    snapshot      path of the peak frame's JPEG, or null without --snapshots
    first_frame   first frame above the threshold in the opening run
    mode          "frame" | "group"
    source        the source's name
    (alert_end)   reason ("recovered" | "end_of_stream" | "stopped" | "error"),
                  last_above_frame,
                  duration_s (first above -> decision), decisions (scores seen in the alert)

The file is opened for appending (a restarted watcher adds to its log), every line is flushed
when written, and the file is fsync'ed on close, so a SIGINT leaves only whole lines.
"""
from __future__ import annotations

import collections
import json
import math
import os
from pathlib import Path
from typing import Any, Deque, Dict, Optional, Union

from ..errors import Dn2Error
from .decide import Transition


class EventWriter:
    """Appends events as JSON lines; ``path=None`` keeps them in memory only."""

    def __init__(self, path: Optional[Union[str, Path]] = None, keep: int = 1000):
        self.path = Path(path) if path else None
        self.count = 0
        self.recent: Deque[Dict[str, Any]] = collections.deque(maxlen=keep)
        self._fh = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
            except OSError as exc:
                raise Dn2Error(f"cannot open events file {self.path} for appending: "
                               f"{exc.strerror or exc}") from exc

    def write(self, event: Dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=False, allow_nan=False)
        self.recent.append(event)
        self.count += 1
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.flush()
            try:
                os.fsync(fh.fileno())
            finally:
                fh.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Snapshots:
    """Writes peak frames as JPEG into a folder (or does nothing without one)."""

    def __init__(self, folder: Optional[Union[str, Path]] = None, quality: int = 90):
        self.folder = Path(folder) if folder else None
        self.quality = int(quality)
        self._last: Optional[tuple] = None  # (alert_id, frame, path): reuse for the same peak
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise Dn2Error(f"cannot create snapshot folder {self.folder}: "
                               f"{exc.strerror or exc}") from exc

    def save(self, t: Transition) -> Optional[str]:
        import cv2

        if self.folder is None or t.peak.image is None:
            return None
        if self._last and self._last[:2] == (t.alert_id, t.peak.frame):
            return self._last[2]
        path = self.folder / f"alert{t.alert_id:05d}_{t.kind}_frame{t.peak.frame:08d}.jpg"
        ok = cv2.imwrite(str(path), t.peak.image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise Dn2Error(f"cannot write snapshot {path} (disk full or folder not writable?)")
        self._last = (t.alert_id, t.peak.frame, str(path))
        return str(path)


def _num(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def event_record(t: Transition, threshold: float, snapshot: Optional[str], mode: str,
                 source: str, clock: str) -> Dict[str, Any]:
    ev: Dict[str, Any] = {
        "type": "alert_start" if t.kind == "start" else "alert_end",
        "alert_id": t.alert_id,
        "frame": int(t.frame),
        "timestamp": round(float(t.timestamp), 6),
        "clock": clock,
        "score": _num(t.score),
        "peak_score": _num(t.peak.score),
        "peak_frame": int(t.peak.frame),
        "threshold": float(threshold),
        "snapshot": snapshot,
        "first_frame": int(t.first_frame),
        "mode": mode,
        "source": source,
    }
    if t.kind == "end":
        ev.update(reason=t.reason, last_above_frame=int(t.last_above_frame),
                  duration_s=round(float(t.timestamp) - float(t.first_timestamp), 6),
                  decisions=int(t.decisions))
    return ev
