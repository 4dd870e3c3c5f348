"""Debounced alert decisions: hysteresis on the score stream, plus a cooldown.

* ``min_consecutive`` scores above the threshold in a row open an alert; as many in a row at or
  below it close the alert. A single noisy frame therefore neither opens nor closes one.
* ``cooldown`` seconds (on the frames' own clock) must pass after an alert closes before the
  next one may open; a run that is still above the threshold when the cooldown ends opens then.
* One alert yields exactly one ``start`` and one ``end`` transition, never one per frame.
  :meth:`Decider.finish` closes an alert left open at the end of the stream or on a stop.

Memory is constant: only the current run's and alert's peak frame are held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import Dn2Error


@dataclass
class Peak:
    score: float
    frame: int
    timestamp: float
    image: Any = None  # the frame's picture, kept for the snapshot
    extra: Any = None  # patch bundles: {"peak", "box", "map", "pixel_threshold"} of the frame


@dataclass
class Transition:
    """An alert opening (``kind='start'``) or closing (``kind='end'``)."""

    kind: str
    alert_id: int
    frame: int  # the frame on which the decision was taken
    timestamp: float
    score: float  # that frame's score
    peak: Peak  # highest score so far in the alert (start: in the opening run)
    first_frame: int  # first frame above the threshold in the opening run
    first_timestamp: float
    last_above_frame: int  # (end) last frame above the threshold
    decisions: int  # scores seen from the first above frame to this one
    reason: str = ""  # (end) recovered | end_of_stream | stopped


class Decider:
    def __init__(self, threshold: float, min_consecutive: int = 3, cooldown: float = 0.0):
        if min_consecutive < 1:
            raise Dn2Error(
                f"min_consecutive must be >= 1, found {min_consecutive}", param="min_consecutive"
            )
        if cooldown < 0:
            raise Dn2Error(f"cooldown must be >= 0 seconds, found {cooldown}", param="cooldown")
        if not math.isfinite(threshold):
            raise Dn2Error(
                f"threshold must be a finite number, found {threshold}", param="threshold"
            )
        self.threshold = float(threshold)
        self.n = int(min_consecutive)
        self.cooldown = float(cooldown)
        self.alerts = 0
        self.open = False
        self._run = 0  # consecutive above (idle) or below (open) scores
        self._first: Optional[Peak] = None  # first above frame of the run / alert
        self._peak: Optional[Peak] = None
        self._last_above = -1
        self._decisions = 0
        self._last_end_ts: Optional[float] = None

    @property
    def state(self) -> str:
        if self.open:
            return "ALERT"
        return "arming" if self._run else "normal"

    def _cooling(self, ts: float) -> bool:
        return self._last_end_ts is not None and ts - self._last_end_ts < self.cooldown

    def update(
        self, score: float, frame: int, timestamp: float, image: Any = None, extra: Any = None
    ) -> Optional[Transition]:
        """Feed one score (frame or group); returns the transition it caused, if any."""
        score = float(score)
        if math.isnan(score):
            return None  # no evidence either way; counters unchanged
        above = score > self.threshold
        if not self.open:
            if not above:
                self._run, self._first, self._peak, self._decisions = 0, None, None, 0
                return None
            self._run += 1
            self._decisions += 1
            self._last_above = frame
            if self._first is None:
                self._first = Peak(score, frame, timestamp)
            if self._peak is None or score > self._peak.score:
                self._peak = Peak(score, frame, timestamp, image, extra)
            if self._run < self.n or self._cooling(timestamp):
                return None
            self.open, self._run = True, 0
            self.alerts += 1
            return self._transition("start", score, frame, timestamp)
        self._decisions += 1
        if above:
            self._run = 0
            self._last_above = frame
            if score > self._peak.score:
                self._peak = Peak(score, frame, timestamp, image, extra)
            return None
        self._run += 1
        if self._run < self.n:
            return None
        return self._close(score, frame, timestamp, "recovered")

    def finish(
        self,
        reason: str = "end_of_stream",
        frame: Optional[int] = None,
        timestamp: Optional[float] = None,
    ) -> Optional[Transition]:
        """Close an alert still open when the stream ends or the loop is stopped."""
        if not self.open:
            return None
        frame = self._last_above if frame is None else frame
        ts = self._peak.timestamp if timestamp is None else timestamp
        return self._close(float("nan"), frame, ts, reason)

    def _close(self, score: float, frame: int, ts: float, reason: str) -> Transition:
        t = self._transition("end", score, frame, ts, reason)
        self.open, self._run, self._first, self._peak, self._decisions = False, 0, None, None, 0
        self._last_end_ts = ts
        return t

    def _transition(
        self, kind: str, score: float, frame: int, ts: float, reason: str = ""
    ) -> Transition:
        return Transition(
            kind=kind,
            alert_id=self.alerts,
            frame=frame,
            timestamp=ts,
            score=score,
            peak=self._peak,
            first_frame=self._first.frame,
            first_timestamp=self._first.timestamp,
            last_above_frame=self._last_above,
            decisions=self._decisions,
            reason=reason,
        )
