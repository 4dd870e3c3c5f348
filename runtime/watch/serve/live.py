"""What the status server shows, handed over by the scoring loop without copies.

The loop calls :meth:`Live.frame` (a reference to the decoded frame, swapped in one assignment),
:meth:`Live.score` (one tuple appended to a bounded deque and two histogram observations) and
:meth:`Live.event`; everything costly (drawing the overlay, JPEG encoding, JSON, the Prometheus
text) happens in the server's threads, on request, at most once per new frame.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Deque, Dict, Optional, Tuple

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
# normalised score (score / threshold): 1.0 is the decision boundary
SCORE_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


class Live:
    def __init__(self, history: int = 6000, alerts: int = 20):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.threshold = float("nan")
        self.run_id: Optional[str] = None
        self.source = ""
        self.started = time.monotonic()
        self.seq = 0  # frames handed over; a new value means a new picture
        self.latest: Optional[Tuple[Any, Optional[float], str, float, str]] = None
        self.history: Deque[Tuple[float, int, float]] = collections.deque(maxlen=history)
        self.alerts: Deque[Dict[str, Any]] = collections.deque(maxlen=alerts)
        self.scored = 0
        self.reader = self.queue = self.outputs = None
        self.cameras: Dict[str, Tuple[Any, Any]] = {}
        self._jpeg: Tuple[int, bytes] = (-1, b"")
        self._jpeg_lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.m_latency = Histogram(
            "dn2_latency_seconds",
            "capture -> decision latency",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.m_score = Histogram(
            "dn2_normalised_score",
            "score / threshold per scored frame or group",
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.m_alerts = Counter("dn2_alerts", "alerts opened", registry=self.registry)
        self.m_events = Counter("dn2_events", "events written", registry=self.registry)
        self.registry.register(_Collector(self))
        self.server = None
        self.url = ""

    # -- the loop's side (cheap) ------------------------------------------------------------
    def attach(
        self,
        *,
        reader,
        queue,
        outputs,
        threshold: float,
        run_id: str,
        source: str,
        cameras: Optional[Dict[str, Tuple[Any, Any]]] = None,
    ) -> None:
        """``cameras``: several cameras' {id: (reader, queue)}; /metrics then also carries
        each camera's frames, drops, reconnects and failures under a ``camera`` label."""
        self.reader, self.queue, self.outputs = reader, queue, outputs
        self.cameras = cameras or {}
        self.threshold, self.run_id, self.source = float(threshold), run_id, source

    def frame(self, image, score: Optional[float], state: str, fps: float, label: str) -> None:
        self.latest = (image, score, state, fps, label)
        self.seq += 1

    def score(self, index: int, captured: float, score: float, state: str) -> None:
        self.history.append((captured, index, score))
        self.scored += 1
        self.m_latency.observe(time.monotonic() - captured)
        if self.threshold > 0 and math.isfinite(score):
            self.m_score.observe(score / self.threshold)

    def event(self, ev: Dict[str, Any]) -> None:
        self.alerts.appendleft(ev)
        self.m_events.inc()
        if ev.get("type") == "alert_start":
            self.m_alerts.inc()

    # -- the server's side ------------------------------------------------------------------
    def jpeg(self) -> Tuple[int, bytes]:
        """(seq, annotated JPEG) of the newest frame, encoded once per frame."""
        import cv2

        from ..overlay import draw

        latest, seq = self.latest, self.seq
        if latest is None:
            return -1, b""
        with self._jpeg_lock:
            if self._jpeg[0] != seq:
                image, score, state, fps, label = latest
                ok, buf = cv2.imencode(
                    ".jpg",
                    draw(image, score, self.threshold, state, fps, label),
                    [cv2.IMWRITE_JPEG_QUALITY, 80],
                )
                if ok:
                    self._jpeg = (seq, buf.tobytes())
            return self._jpeg

    def fps(self, span: float = 5.0) -> float:
        h = list(self.history)[-600:]
        if len(h) < 2:
            return 0.0
        recent = [c for c, _, _ in h if h[-1][0] - c <= span]
        return (len(recent) - 1) / (recent[-1] - recent[0]) if recent[-1] > recent[0] else 0.0

    def source_state(self) -> str:
        r = self.reader
        if r is None:
            return "starting"
        if not r.is_alive():
            return "failed" if r.stats.error else "ended"
        last = self.history[-1][0] if self.history else self.started
        return "reconnecting" if r.stats.failures and time.monotonic() - last > 2.0 else "running"

    def state(self, seconds: float = 300.0) -> Dict[str, Any]:
        now = time.monotonic()
        hist = [
            (round(c - now, 3), i, s if math.isfinite(s) else None)
            for c, i, s in list(self.history)
            if now - c <= seconds
        ]
        latest = self.latest
        backlog = self.outputs.backlog() if self.outputs is not None else {}
        return {
            "run_id": self.run_id,
            "source": self.source,
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "seq": self.seq,
            "scored": self.scored,
            "fps": round(self.fps(), 2),
            "state": latest[2] if latest else "starting",
            "score": latest[1]
            if latest and latest[1] is not None and math.isfinite(latest[1])
            else None,
            "norm_score": latest[1] / self.threshold
            if latest
            and latest[1] is not None
            and math.isfinite(latest[1])
            and math.isfinite(self.threshold)
            and self.threshold > 0
            else None,
            "source_state": self.source_state(),
            "sink_backlog": backlog,
            "history": hist,
            "alerts": [_public(e) for e in list(self.alerts)],
        }

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def _public(ev: Dict[str, Any]) -> Dict[str, Any]:
    import os

    snap = ev.get("snapshot")
    return {
        k: ev.get(k)
        for k in (
            "type",
            "alert_id",
            "frame",
            "timestamp",
            "clock",
            "peak_score",
            "peak_norm_score",
            "threshold",
            "reason",
        )
    } | {"snapshot": f"/snapshots/{os.path.basename(snap)}" if snap else None}


class _Collector:
    """Counters and gauges read from the loop's own counters at scrape time (nothing on the
    hot path)."""

    def __init__(self, live: Live):
        self.live = live

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        lv = self.live
        r, q = lv.reader, lv.queue
        yield CounterMetricFamily(
            "dn2_frames_read", "frames taken from the source", value=r.stats.frames if r else 0
        )
        yield CounterMetricFamily("dn2_frames_scored", "frames (or groups) scored", value=lv.scored)
        yield CounterMetricFamily(
            "dn2_frames_dropped", "live frames dropped (scorer behind)", value=q.dropped if q else 0
        )
        yield CounterMetricFamily(
            "dn2_source_reconnects",
            "source reopened after a failure",
            value=r.stats.reconnects if r else 0,
        )
        yield CounterMetricFamily(
            "dn2_source_failures", "failed reads / opens", value=r.stats.failures if r else 0
        )
        if lv.cameras:
            yield from _per_camera(lv.cameras)
        yield GaugeMetricFamily("dn2_fps", "scored frames per second (last 5 s)", value=lv.fps())
        yield GaugeMetricFamily("dn2_threshold", "threshold in force", value=lv.threshold)
        st = GaugeMetricFamily(
            "dn2_source_state", "1 for the source's current state", labels=["state"]
        )
        now = lv.source_state()
        for name in ("starting", "running", "reconnecting", "ended", "failed"):
            st.add_metric([name], 1.0 if name == now else 0.0)
        yield st
        bl = GaugeMetricFamily(
            "dn2_sink_backlog", "events waiting in a sink's spool", labels=["sink"]
        )
        for name, n in (lv.outputs.backlog() if lv.outputs is not None else {}).items():
            bl.add_metric([name], n)
        yield bl
        nw = GaugeMetricFamily(
            "dn2_outputs_unwritten",
            "outputs with write failures so far",
            value=len(lv.outputs.problems()) if lv.outputs else 0,
        )
        yield nw


def _per_camera(cameras):
    """Several cameras: each one's reader and queue counters, labelled by camera id."""
    from prometheus_client.core import CounterMetricFamily

    for name, doc, get in (
        ("dn2_camera_frames_read", "frames taken from this camera", lambda r, q: r.stats.frames),
        ("dn2_camera_frames_dropped", "live frames dropped", lambda r, q: q.dropped),
        (
            "dn2_camera_reconnects",
            "camera reopened after a failure",
            lambda r, q: r.stats.reconnects,
        ),
        ("dn2_camera_failures", "failed reads / opens", lambda r, q: r.stats.failures),
    ):
        fam = CounterMetricFamily(name, doc, labels=["camera"])
        for cid, (r, q) in cameras.items():
            fam.add_metric([cid], get(r, q))
        yield fam
