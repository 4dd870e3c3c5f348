"""The scoring side of the camera loop: batches of frames -> scores -> decisions -> outputs.

:func:`score_loop` runs on the scoring thread of :func:`dn2.runtime.watch.loop.watch`: it takes
every frame already waiting (up to ``batch``) in one model call, scores them against the bundle's
bank per frame, through the bundle's views and patch maps, or pools the last ``group`` embeddings
(:class:`GroupWindow`) and scores the pool every ``hop`` frames; it feeds the scores to the
hysteresis decider and the outputs.
"""

from __future__ import annotations

import collections
import threading
from typing import Optional

import numpy as np

from ..errors import Dn2Error
from .decide import Decider
from .outputs import Outputs
from .reader import FrameQueue, Reader
from .stats import Stats, Summary


class GroupWindow:
    """The last ``size`` embeddings; yields a pooled group score every ``hop`` frames.

    ``scorer`` has ``score_group_embeddings(emb [M, D]) -> float``: the Detector (the
    bundle's group bank) or, after ``--learn``, the learned stream's windows.
    """

    def __init__(self, scorer, size: int, hop: int):
        self.detector, self.hop = scorer, hop
        self.window: collections.deque = collections.deque(maxlen=size)
        self.since = 0

    def push(self, emb: np.ndarray) -> Optional[float]:
        self.window.append(emb)
        self.since += 1
        if len(self.window) < self.window.maxlen or self.since < self.hop:
            return None
        self.since = 0
        return float(self.detector.score_group_embeddings(np.stack(self.window)))


def _embed(detector, frames) -> np.ndarray:
    return detector.embedder.embed_batch(np.stack([f.prepared for f in frames]))


def _map_peak(heat) -> Optional[float]:
    """The anomaly map's value at its peak (patch bundles), else None."""
    if not heat or heat.get("map") is None or heat.get("peak") is None:
        return None
    x, y = heat["peak"]
    return float(heat["map"][y, x])


class Scorer:
    """Turns batches of frames into scores, decisions, events and overlay frames."""

    def __init__(
        self,
        detector,
        out: Outputs,
        decider: Decider,
        group: Optional[int],
        hop: int,
        stats: Stats,
        log,
        on_score=None,
        groups=None,
    ):
        self.detector, self.out, self.decider, self.stats = detector, out, decider, stats
        self.gwin = GroupWindow(groups or detector, group, hop) if group else None
        self.label = "group" if group else ""
        self.log, self.on_score = log, on_score
        self.last_score: Optional[float] = None
        self.last = None  # the last frame scored
        m = getattr(detector, "manifest", None)
        median = m.threshold.median if m is not None else None
        from .drift import DriftCheck

        self.drift = None if group else DriftCheck(decider.threshold, median, out.source_name)

    def compute(self, frames):
        """One model call for ``frames`` (of one camera or several): (embeddings or None,
        scores or None, heats)."""
        heats = [None] * len(frames)
        if getattr(self.detector, "views", False) and not self.gwin:
            scores, heats = self._views(frames)
            return None, scores, heats
        emb = _embed(self.detector, frames)
        return emb, (None if self.gwin else self.detector.score_embeddings(emb)), heats

    def _views(self, frames):
        """View / patch bundles: scores and, with patches, each frame's heat."""
        d = self.detector
        res = d.view_scorer.score_images(
            [f.image for f in frames], maps=d.has_maps, names=[f"frame {f.index}" for f in frames]
        )
        bad = [r.error for r in res if r.error]
        if bad:
            raise Dn2Error(bad[0])
        heats = [None] * len(res)
        if d.has_maps:
            pt = d.view_scorer.pixel_threshold
            heats = [
                {"map": r.map, "pixel_threshold": pt, "peak": r.peak, "box": r.box} for r in res
            ]
        return np.asarray([r.score for r in res], np.float32), heats

    def batch(self, frames) -> None:
        self.apply(frames, *self.compute(frames))

    def apply(self, frames, emb, scores, heats) -> None:
        """Decisions and outputs for ``frames`` (one camera's, in order) from their model
        results."""
        fps = self.stats.recent_fps()
        for i, f in enumerate(frames):
            if self.gwin:
                s = self.gwin.push(emb[i])
                if s is None:  # window not full yet, or between hops: no new decision
                    self.out.frame(f.image, self.last_score, self.decider.state, fps, self.label)
                    continue
                self.stats.groups += 1
            else:
                s = float(scores[i])
            self.last_score = s
            d = self.drift.add(s, f.index) if self.drift is not None else None
            if d is not None:
                self.log(d["message"])
                self.out.notice(d)
            if self.on_score is not None:
                self.on_score(f.index, f.timestamp, s)
            t = self.decider.update(s, f.index, f.timestamp, f.image, heats[i])
            self.out.score(
                f,
                s,
                self.decider.state,
                self.decider.alerts if self.decider.open else None,
                _map_peak(heats[i]),
            )
            if t is not None:
                ev = self.out.transition(t)
                self.log(
                    f"{ev['type']} #{ev['alert_id']} at frame {ev['frame']} score "
                    f"{s:.4g} (threshold {self.decider.threshold:.4g})"
                )
            self.out.frame(f.image, s, self.decider.state, fps, self.label, heats[i])
        self.last = frames[-1]
        self.stats.record([f.captured for f in frames])

    def finish(self, reason: str) -> None:
        """Close an alert still open, so every alert_start has its alert_end."""
        last = self.last
        t = self.decider.finish(
            reason, frame=last.index if last else None, timestamp=last.timestamp if last else None
        )
        if t is not None:
            self.out.transition(t)
            self.log(f"alert_end #{t.alert_id} ({reason})")


def score_loop(
    detector,
    queue: FrameQueue,
    reader: Reader,
    out: Outputs,
    summary: Summary,
    decider: Decider,
    batch: int,
    group: Optional[int],
    hop: int,
    stats_every: float,
    stop: threading.Event,
    log,
    pending=(),
    on_score=None,
    groups=None,
) -> None:
    stats = Stats()
    scorer = Scorer(detector, out, decider, group, hop, stats, log, on_score, groups)
    reason = "end_of_stream"
    try:
        while True:
            if stop.is_set():
                reason = "stopped"
                break
            if pending:
                frames, pending = list(pending[:batch]), pending[batch:]
            else:
                frames = queue.get_batch(batch, timeout=0.1)
            if frames is None:
                break
            if frames:
                scorer.batch(frames)
            if stats.due(stats_every):
                waiting = sum(out.backlog().values())
                log(
                    stats.line(queue.dropped, reader.stats.reconnects, len(queue))
                    + (f", sink backlog {waiting}" if waiting else "")
                )
    except KeyboardInterrupt:  # library use without the CLI's signal handlers: a clean stop
        stop.set()
        reason = "stopped"
    except BaseException:
        scorer.finish("error")  # the events file still pairs every alert, then re-raise
        raise
    scorer.finish(reason)
    stats.fill(summary)
    if scorer.drift is not None and scorer.drift.said is not None:
        summary.drift = scorer.drift.said["message"]
    summary.alerts = decider.alerts
