"""Loop statistics: throughput, latency percentiles, drops, and the end-of-run summary.

Latency of a frame = time from the reader taking it off the source to its decision being made
(queue wait + preparation + embedding + scoring + decision + outputs). Percentiles are over the
last ``window`` frames, so memory stays constant however long the loop runs.
"""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Deque, Dict, List, Optional

import numpy as np


@dataclass
class Summary:
    """What a watch run did; returned by :func:`dn2.runtime.watch.loop.watch`."""

    source: str
    mode: str  # frame | group
    threshold: float
    frames_read: int = 0  # frames queued by the reader (after --stride)
    frames_scored: int = 0
    groups_scored: int = 0
    dropped: int = 0  # live frames dropped because the scorer lagged
    failures: int = 0  # failed reads / opens
    reconnects: int = 0
    skipped_items: int = 0  # folder images passed over after retries
    lost_frames: int = 0  # frames of a damaged video file that could not be read
    partial_frames: int = 0  # stream frames cut off mid-JPEG (camera dropped): not scored
    alerts: int = 0
    events: int = 0
    elapsed_s: float = 0.0
    fps: float = 0.0  # scored frames per second over the whole run
    latency_p50_ms: Optional[float] = None
    latency_p95_ms: Optional[float] = None
    cpu_percent: Optional[float] = None  # process CPU time / wall time (100 = one core)
    stopped: bool = False  # ended by stop (SIGINT / SIGTERM / stop event), not end of stream
    error: Optional[str] = None  # why the stream ended early, if it did
    events_path: Optional[str] = None
    bundle: Optional[str] = None  # the bundle used (the learned one with --learn)
    problems: List[str] = field(default_factory=list)  # recent skipped items, bounded
    run_id: Optional[str] = None  # in every event, scores row and snapshot name of this run
    unwritten: List[str] = field(default_factory=list)  # outputs that failed, one line each
    drift: Optional[str] = None  # the drift warning, when the frames did not look normal
    sink_backlog: Dict[str, int] = field(default_factory=dict)  # events spooled, not sent
    camera: Optional[str] = None  # this camera's id (a camera's summary in a multi-camera run)
    cameras: List[dict] = field(default_factory=list)  # several cameras: each one's summary

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        head = self._text()
        for c in self.cameras:  # several cameras: one line each
            lat = (
                f"p50 {c['latency_p50_ms']:.1f} ms p95 {c['latency_p95_ms']:.1f} ms"
                if c["latency_p50_ms"] is not None
                else "n/a"
            )
            head += (
                f"\n  camera {c['camera']} ({c['source']}): {c['frames_scored']} frames of "
                f"{c['frames_read']} read, {c['fps']:.1f} fps, latency {lat}; dropped "
                f"{c['dropped']}, reconnects {c['reconnects']}; {c['alerts']} alerts"
                + (f"; ended early: {c['error']}" if c["error"] else "")
            )
        return head

    def _text(self) -> str:
        lat = (
            f"latency p50 {self.latency_p50_ms:.1f} ms p95 {self.latency_p95_ms:.1f} ms"
            if self.latency_p50_ms is not None
            else "latency n/a"
        )
        groups = f", {self.groups_scored} groups" if self.mode == "group" else ""
        how = (
            "stopped"
            if self.stopped
            else ("ended early: " + self.error if self.error else "end of stream")
        )
        cpu = f", CPU {self.cpu_percent:.0f}%" if self.cpu_percent is not None else ""
        return (
            f"dn2-watch summary ({how}): {self.frames_scored} frames scored{groups} "
            f"of {self.frames_read} read in {self.elapsed_s:.1f} s ({self.fps:.1f} fps), "
            f"{lat}{cpu}; dropped {self.dropped}, reconnects {self.reconnects}, "
            f"skipped {self.skipped_items}"
            + (f", LOST {self.lost_frames} unreadable frames" if self.lost_frames else "")
            + (
                f", {self.partial_frames} partial stream frames not scored"
                if self.partial_frames
                else ""
            )
            + f"; {self.alerts} alerts, {self.events} events"
            + (f" -> {self.events_path}" if self.events_path else "")
            + (f"; run {self.run_id}" if self.run_id else "")
            + "".join(f"\n  NOT WRITTEN: {u}" for u in self.unwritten)
            + (f"\n  {self.drift}" if self.drift else "")
            + "".join(
                f"\n  waiting in the {k} spool: {n} events (sent on the next run)"
                for k, n in self.sink_backlog.items()
                if n
            )
        )


def percentile_ms(values, q: float) -> Optional[float]:
    if not len(values):
        return None
    return float(np.percentile(np.fromiter(values, dtype=np.float64), q) * 1000.0)


class Stats:
    def __init__(self, window: int = 2000):
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self.latencies: Deque[float] = collections.deque(maxlen=window)
        self.done_at: Deque[float] = collections.deque(maxlen=window)
        self.frames = 0
        self.groups = 0
        self._last_line = self.t0

    def record(self, captured: List[float]) -> None:
        """A batch of frames whose decisions are done; ``captured`` are their reader times."""
        now = time.monotonic()
        for c in captured:
            self.latencies.append(now - c)
            self.done_at.append(now)
        self.frames += len(captured)

    def recent_fps(self, span: float = 5.0) -> float:
        if len(self.done_at) < 2:
            return 0.0
        now = self.done_at[-1]
        n, first = 0, now
        for t in reversed(self.done_at):
            if now - t > span:
                break
            n, first = n + 1, t
        return (n - 1) / (now - first) if now > first else 0.0

    def due(self, every: float) -> bool:
        now = time.monotonic()
        if every > 0 and now - self._last_line >= every:
            self._last_line = now
            return True
        return False

    def line(self, dropped: int, reconnects: int, queued: int) -> str:
        p50, p95 = percentile_ms(self.latencies, 50), percentile_ms(self.latencies, 95)
        lat = f"p50 {p50:.1f} ms p95 {p95:.1f} ms" if p50 is not None else "n/a"
        groups = f" groups {self.groups}" if self.groups else ""
        return (
            f"[dn2-watch] {self.recent_fps():.1f} fps, latency {lat}, frames {self.frames}"
            f"{groups}, queue {queued}, dropped {dropped}, reconnects {reconnects}"
        )

    def fill(self, s: Summary) -> Summary:
        wall = time.monotonic() - self.t0
        s.frames_scored, s.groups_scored = self.frames, self.groups
        s.elapsed_s = wall
        s.fps = self.frames / wall if wall > 0 else 0.0
        s.latency_p50_ms = percentile_ms(self.latencies, 50)
        s.latency_p95_ms = percentile_ms(self.latencies, 95)
        s.cpu_percent = 100.0 * (time.process_time() - self.cpu0) / wall if wall > 0 else None
        return s
