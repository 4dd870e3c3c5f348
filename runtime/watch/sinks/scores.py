"""Per-frame scores to a file: CSV (``.csv``) or JSON lines (anything else); ``-`` is stdout.

One row per score (per frame, or per scored group in group mode)::

    run_id      the run's id (as in the events)
    frame       source frame number (group mode: the window's last frame)
    time        capture time, ISO-8601 with the local UTC offset (milliseconds)
    mono_s      capture time on the monotonic clock (seconds; for differences)
    score       raw score (mean squared distance to the k nearest normal embeddings)
    norm_score  score / threshold: 1.0 is the decision boundary
    decision    the decider's state after this score: normal | arming | ALERT
    alert_id    the open alert's id (empty / null outside an alert)
    map_peak    the anomaly map's peak when the bundle scores patches (else empty / null)
    camera      the camera's id (only when one watch runs several cameras)

Rows are written in small batches (every 0.5 s or 64 rows) with one unbuffered write each, so
the scoring loop pays a string format per frame and nothing else; a write that fails is counted
and reported at the end, never raised.
"""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import List, Optional

from ...errors import Dn2Error
from ..events import _open_nonblocking, _write_all

COLUMNS = (
    "run_id",
    "frame",
    "time",
    "mono_s",
    "score",
    "norm_score",
    "decision",
    "alert_id",
    "map_peak",
)


class ScoresWriter:
    def __init__(
        self,
        path: str,
        run_id: str,
        threshold: float,
        force: bool = False,
        flush_rows: int = 64,
        flush_s: float = 0.5,
        cameras: bool = False,
    ):
        self.path, self.run_id, self.threshold = path, run_id, float(threshold)
        self.cameras = cameras  # several cameras: a last column names each row's camera
        self.csv = path != "-" and Path(path).suffix.lower() == ".csv"
        self.rows = self.lost = 0
        self.last_error: Optional[str] = None
        self._buf: List[str] = []
        self._flush_rows, self._flush_s = flush_rows, flush_s
        self._next_flush = time.monotonic() + flush_s
        self._tz = datetime.now().astimezone().tzinfo
        self._wall_off = time.time() - time.monotonic()
        if path == "-":
            self._fd, self._own = sys.stdout.fileno(), False
        else:
            p = Path(path)
            if p.exists() and p.is_file() and p.stat().st_size and not force:
                raise Dn2Error(
                    f"scores {p} exists (from an earlier run?); pass force to "
                    "overwrite it, or give a new name",
                    params=("scores", "force"),
                )
            self._fd, self._own = _open_nonblocking(p, "scores file", append=False), True
        if self.csv:
            self._buf.append(",".join(COLUMNS + (("camera",) if cameras else ())) + "\n")

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def row(
        self,
        frame: int,
        captured: float,
        score: float,
        decision: str,
        alert_id: Optional[int],
        map_peak: Optional[float] = None,
        camera: Optional[str] = None,
    ) -> None:
        iso = datetime.fromtimestamp(captured + self._wall_off, self._tz).isoformat(
            timespec="milliseconds"
        )
        ok = math.isfinite(score)
        norm = score / self.threshold if ok and self.threshold > 0 else None
        if self.csv:
            self._buf.append(
                f"{self.run_id},{frame},{iso},{captured:.6f},"
                f"{score:.6g},{'' if norm is None else f'{norm:.6g}'},{decision},"
                f"{'' if alert_id is None else alert_id},"
                f"{'' if map_peak is None else f'{map_peak:.6g}'}"
                + (f",{camera}\n" if self.cameras else "\n")
            )
        else:
            self._buf.append(
                json.dumps(
                    {
                        "run_id": self.run_id,
                        "frame": frame,
                        "time": iso,
                        "mono_s": round(captured, 6),
                        "score": score if ok else None,
                        "norm_score": None if norm is None else round(norm, 6),
                        "decision": decision,
                        "alert_id": alert_id,
                        "map_peak": map_peak,
                        **({"camera": camera} if self.cameras else {}),
                    }
                )
                + "\n"
            )
        self.rows += 1
        if len(self._buf) >= self._flush_rows or time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        if not self._buf or self._fd is None:
            return
        data, n = "".join(self._buf).encode("utf-8"), len(self._buf)
        self._buf.clear()
        self._next_flush = time.monotonic() + self._flush_s
        if not _write_all(self._fd, data, self._note):
            self.lost += n

    def _note(self, why: str) -> None:
        self.last_error = why

    def problems(self) -> List[str]:
        return (
            [
                f"scores file {self.path}: {self.lost} of {self.rows} rows not written "
                f"({self.last_error})"
            ]
            if self.lost
            else []
        )

    def close(self) -> None:
        self.flush()
        if self._own and self._fd is not None:
            import os

            os.close(self._fd)
        self._fd = None
