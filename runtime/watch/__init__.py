"""dn2-watch: the camera loop (reader thread -> bounded queue -> batched scorer -> events).

    from dn2.runtime.config import WatchConfig
    from dn2.runtime.watch import watch
    summary = watch("bundle/", "rtsp://cam/stream", WatchConfig(events="events.jsonl"))
    summary = watch("bundle/", ["rtsp://cam1/s", "rtsp://cam2/s"], WatchConfig(batch=8))

Modules: ``sources`` (OpenCV sources), ``reader`` (reader thread, bounded queue, reconnect),
``decide`` (hysteresis + cooldown), ``events`` (JSON lines, snapshots), ``overlay`` (drawing,
video, window), ``outputs`` (all of those per decision), ``stats`` (fps, latency, summary),
``learn`` (``--learn``: fit from the stream's first frames), ``loop`` (:func:`watch`),
``cameras`` / ``multi`` (several sources: one reader each, one model batching across them),
``cli`` (``dn2-watch``).
"""

from .loop import watch
from .stats import Summary

__all__ = ["watch", "Summary"]
