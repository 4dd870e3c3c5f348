"""Alert events: JSON lines (one object per line, flushed per event) and peak-frame snapshots.

Each alert writes two lines, ``alert_start`` when it opens and ``alert_end`` when it closes,
sharing ``alert_id``. Fields::

    type          "alert_start" | "alert_end"
    run_id        this run's id (UTC start time + random suffix): alert ids restart at 1
                  every run, (run_id, alert_id) is unique across runs
    alert_id      1, 2, ... within this run
    frame         source frame number the decision was taken on (group mode: window's last)
    timestamp     seconds; clock says which: "source" (frame / fps, files) or "wall" (Unix time)
    clock         "source" | "wall"
    score         score of that frame or group (alert_end on a stop / end of stream: null)
    peak_score    highest score of the alert so far, peak_frame its frame
    threshold     the threshold in force
    norm_score, peak_norm_score   score / threshold and peak_score / threshold (1.0 is the
                  decision boundary, the same on every bundle)
    snapshot      path of the peak frame's JPEG, or null without --snapshots
    snapshot_annotated  the same frame with the overlay (raw and normalised score; patch
                  bundles: the heatmap), beside it as ``..._annotated.jpg``
    snapshot_error  why the snapshot could not be written (null when it was, or none asked)
    first_frame   first frame above the threshold in the opening run
    mode          "frame" | "group"
    source        the source's name
    camera        the camera's id (only when one watch runs several cameras; alert ids
                  count per camera, so (run_id, camera, alert_id) is unique)
    (alert_end)   reason ("recovered" | "end_of_stream" | "stopped" | "error"),
                  last_above_frame,
                  duration_s (first above -> decision), decisions (scores seen in the alert)

The file is opened for appending (a restarted watcher adds to its log), every line is written
with one unbuffered write, and the file is fsync'ed on close, so a SIGINT leaves only whole
lines. A line that cannot be written is counted and reported at the end, never raised.
"""

from __future__ import annotations

import collections
import errno
import json
import math
import os
import select
import stat
import sys
import time
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple, Union

from ..errors import Dn2Error
from .decide import Transition


class EventWriter:
    """Appends events as JSON lines (``path="-"``: stdout); ``path=None`` keeps them in memory
    only.

    The JSON-lines sink of :mod:`dn2.runtime.watch.sinks`. The file is opened non-blocking, so
    a FIFO with no reader is an error at once (never a hang) and a full pipe never stalls the
    scorer. A write that fails (disk full, ``/dev/full``, a reader that went away) never
    raises: the event is kept in memory (``recent``), counted in ``lost`` and reported by
    :meth:`problems`; later events are still tried.
    """

    name = "events"

    def __init__(self, path: Optional[Union[str, Path]] = None, keep: int = 1000):
        self.path = Path(path) if path else None
        self.count = 0
        self.lost = 0
        self.last_error: Optional[str] = None
        self.recent: Deque[Dict[str, Any]] = collections.deque(maxlen=keep)
        self._fd: Optional[int] = None
        self._regular = False
        if self.path is not None and str(path) == "-":  # stdout, as every "-" path
            sys.stdout.flush()
            self._fd = os.dup(sys.stdout.fileno())
        elif self.path is not None:
            self._fd = _open_nonblocking(self.path, "events file")
            self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)

    def write(self, event: Dict[str, Any]) -> None:
        line = (json.dumps(event, sort_keys=False, allow_nan=False) + "\n").encode("utf-8")
        self.recent.append(event)
        self.count += 1
        if self._fd is not None and not _write_all(self._fd, line, self._note):
            self.lost += 1

    def _note(self, why: str) -> None:
        self.last_error = why

    def backlog(self) -> int:
        return 0

    def problems(self) -> List[str]:
        if not self.lost:
            return []
        return [
            f"events file {self.path}: {self.lost} of {self.count} events not written "
            f"({self.last_error})"
        ]

    def close(self, timeout: Optional[float] = None) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._regular:
                    os.fsync(fd)
            except OSError as exc:
                self._note(f"fsync: {exc.strerror or exc}")
            finally:
                os.close(fd)

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_nonblocking(path: Path, what: str, append: bool = True) -> int:
    """An fd for writing ``path`` that can never block: O_NONBLOCK, so a FIFO without a
    reader fails with a clear message instead of hanging in open()."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        flags |= os.O_APPEND if append else os.O_TRUNC
        return os.open(str(path), flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise Dn2Error(
                f"cannot open {what} {path}: it is a FIFO with no reader (start "
                "the reading program first, or give a regular file)"
            ) from exc
        raise Dn2Error(f"cannot open {what} {path} for appending: {exc.strerror or exc}") from exc


def _write_all(fd: int, data: bytes, note, wait_s: float = 0.25) -> bool:
    """Write ``data`` to a non-blocking fd; a full pipe is waited on for at most ``wait_s``
    (then the rest is dropped, so a reader that stopped reading cannot stall the loop)."""
    view, deadline = memoryview(data), None
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            now = time.monotonic()
            deadline = deadline or now + wait_s
            if now >= deadline:
                note("the reader of the pipe is not reading")
                return False
            select.select([], [fd], [], max(0.0, deadline - now))
        except OSError as exc:
            note(exc.strerror or str(exc))
            return False
    return True


class Snapshots:
    """Writes peak frames as JPEG into a folder (or does nothing without one).

    Names carry the run id (``<run>_alert00001_start_frame00000123.jpg``; with several
    cameras ``<run>_<camera>_alert...``), so a second run never overwrites the first run's
    evidence. A folder removed mid-run is made again; a
    snapshot that still cannot be written is reported (:meth:`try_save`), never raised.
    """

    def __init__(
        self,
        folder: Optional[Union[str, Path]] = None,
        quality: int = 90,
        run_id: str = "",
        camera: Optional[str] = None,
    ):
        self.folder = Path(folder) if folder else None
        self.quality = int(quality)
        # several cameras: <run>_<camera>_alert...
        self.prefix = "".join(f"{x}_" for x in (run_id, camera) if x)
        self.failed = 0
        self.last_error: Optional[str] = None
        self._last: Optional[tuple] = None  # (alert_id, frame, path): reuse for the same peak
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise Dn2Error(
                    f"cannot create snapshot folder {self.folder}: {exc.strerror or exc}"
                ) from exc

    def save(self, t: Transition) -> Optional[str]:
        """The snapshot's path; raises :class:`Dn2Error` when it cannot be written."""
        path, error = self.try_save(t)
        if error:
            raise Dn2Error(error)
        return path

    def try_save(
        self, t: Transition, threshold: Optional[float] = None
    ) -> Tuple[Optional[str], Optional[str]]:
        """(path, None) when written (or None, None without a folder), else (None, why).
        With ``threshold``, an annotated copy (``..._annotated.jpg``: the overlay with the raw
        and normalised score, and the heatmap for patch bundles) is written beside it."""
        import cv2

        if self.folder is None or t.peak.image is None:
            return None, None
        if self._last and self._last[:2] == (t.alert_id, t.peak.frame):
            return self._last[2], None
        path = self.folder / (
            f"{self.prefix}alert{t.alert_id:05d}_{t.kind}_frame{t.peak.frame:08d}.jpg"
        )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            ok = cv2.imwrite(str(path), t.peak.image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            why = None if ok else "disk full or folder not writable?"
        except (OSError, cv2.error) as exc:
            ok, why = False, getattr(exc, "strerror", None) or str(exc).strip()
        if not ok:
            self.failed += 1
            self.last_error = f"cannot write snapshot {path} ({why})"
            return None, self.last_error
        self._last = (t.alert_id, t.peak.frame, str(path))
        self._annotated(t, path, threshold)
        return str(path), None

    def _annotated(self, t: Transition, path: Path, threshold: Optional[float]) -> None:
        """The peak frame with the score overlay (and the heatmap of patch bundles), beside
        the raw snapshot (``..._annotated.jpg``); a failure here is counted, the raw one
        stands."""
        import cv2

        x = t.peak.extra
        heat = bool(x) and x.get("map") is not None
        if not heat and threshold is None:
            return
        from ..heatmap import overlay
        from .overlay import draw

        ann = path.with_name(path.stem + "_annotated.jpg")
        try:
            img = t.peak.image
            if heat:
                img = overlay(img, x["map"], x["pixel_threshold"], x["peak"], x["box"])
            if threshold is not None:
                img = draw(img, t.peak.score, threshold, "ALERT", None, f"frame {t.peak.frame}")
            if not cv2.imwrite(str(ann), img, [cv2.IMWRITE_JPEG_QUALITY, self.quality]):
                raise OSError("disk full or folder not writable?")
        except (OSError, cv2.error) as exc:
            self.failed += 1
            self.last_error = f"cannot write snapshot {ann} ({exc})"

    def problems(self) -> List[str]:
        return (
            [f"snapshots: {self.failed} not written; last: {self.last_error}"]
            if self.failed
            else []
        )


def _num(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def event_record(
    t: Transition,
    threshold: float,
    snapshot: Optional[str],
    mode: str,
    source: str,
    clock: str,
    run_id: Optional[str] = None,
    snapshot_error: Optional[str] = None,
    camera: Optional[str] = None,
) -> Dict[str, Any]:
    ev: Dict[str, Any] = {
        "type": "alert_start" if t.kind == "start" else "alert_end",
        "run_id": run_id,
        "alert_id": t.alert_id,
        "frame": int(t.frame),
        "timestamp": round(float(t.timestamp), 6),
        "clock": clock,
        "score": _num(t.score),
        "peak_score": _num(t.peak.score),
        "peak_frame": int(t.peak.frame),
        "threshold": float(threshold),
        # score / threshold: 1.0 is the decision boundary, whatever the bundle's scale
        "norm_score": _norm(t.score, threshold),
        "peak_norm_score": _norm(t.peak.score, threshold),
        "snapshot": snapshot,
        "snapshot_error": snapshot_error,
        "first_frame": int(t.first_frame),
        "mode": mode,
        "source": source,
    }
    if camera is not None:  # several cameras in one watch: which one
        ev["camera"] = camera
    x = t.peak.extra
    if x:  # patch bundles: where the peak frame's map peaks, and its box over the pixel threshold
        ev.update(peak=x.get("peak"), box=x.get("box"))
    if snapshot:  # the overlay (raw and normalised score; patch bundles: the heatmap)
        ev["snapshot_annotated"] = snapshot[: -len(".jpg")] + "_annotated.jpg"
    if t.kind == "end":
        ev.update(
            reason=t.reason,
            last_above_frame=int(t.last_above_frame),
            duration_s=round(float(t.timestamp) - float(t.first_timestamp), 6),
            decisions=int(t.decisions),
        )
    return ev


def _norm(score, threshold):
    s = _num(score)
    return None if s is None or not threshold or threshold <= 0 else round(s / threshold, 6)


def new_run_id() -> str:
    """A run id: UTC start time and a random suffix, e.g. ``20261201T090600Z-3fa2c1``; sorts
    by time and never repeats across runs (snapshot names and events carry it)."""
    import secrets

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
