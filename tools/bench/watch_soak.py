"""The watch loop's memory soak (``python -m dn2.tools.bench.watch --soak N``): the loop over N
frames of a replayed video with a stain every so often (alerts open, close and write
snapshots) while the process RSS is sampled; memory must stay flat once the model is warm."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from dn2.runtime.watch.sources import CaptureSource
from dn2.tools.videoio import write_video


class Looped(CaptureSource):
    """A video file replayed ``times`` times as one stream (for the soak run)."""

    def __init__(self, path: str, times: int):
        super().__init__(path, "file", live=False)
        self.left = times

    def read(self):
        img = super().read()
        while img is None and self.left > 1:
            self.left -= 1
            self.close()
            self._pos = 0
            self.open()
            img = super().read()
        return img


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(
    model: str,
    bundle: Optional[str],
    n_frames: int,
    size: str,
    batch: int,
    threads: Optional[int],
    work: Path,
) -> dict:
    """RSS over a long run; returns samples [(frames scored, RSS MB)] and the summary."""
    import threading

    from dn2.runtime.config import WatchConfig
    from dn2.runtime.detector import Detector
    from dn2.runtime.watch.loop import watch
    from dn2.tools.bench.watch import _textile_paths, default_bundle, make_frames

    w, h = (int(v) for v in size.lower().split("x"))
    bundle = bundle or default_bundle(model, work, w, h, threads=threads)
    frames = make_frames(_textile_paths(1000)[-100:], w, h)
    import cv2

    for i in range(40, 50):  # a stain: one alert (start, end, snapshots) per replay
        cv2.circle(frames[i], (w // 2, h // 2), min(w, h) // 4, (20, 20, 20), -1)
    video = write_video(work / "soak.avi", frames, fps=25.0)
    det = Detector.load(bundle, threads=threads, batch_size=batch)
    samples, done = [], threading.Event()
    scored = [0]

    def sample():
        while not done.wait(1.0):
            samples.append((scored[0], _rss_mb()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    times = max(1, -(-n_frames // len(frames)))
    summary = watch(
        det,
        Looped(str(video), times),
        WatchConfig(
            batch=batch,
            max_frames=n_frames,
            events=str(work / "soak_events.jsonl"),
            snapshots=str(work / "soak_snaps"),
        ),
        on_score=lambda i, ts, s: scored.__setitem__(0, scored[0] + 1),
    )
    done.set()
    t.join()
    samples.append((scored[0], _rss_mb()))
    return {"samples": samples, "summary": summary.to_dict()}


def soak_table(r: dict) -> str:
    s = r["samples"]
    n = len(s)
    picks = sorted({0, n // 10, n // 4, n // 2, 3 * n // 4, n - 1}) if n else []
    rows = ["| frames scored | RSS MB |", "|---|---|"]
    rows += [f"| {s[i][0]} | {s[i][1]:.1f} |" for i in picks]
    sm = r["summary"]
    after_warm = [m for f, m in s if f >= s[-1][0] * 0.1] or [0.0]
    return "\n".join(
        rows
        + [
            f"RSS from 10% of the run to the end: min {min(after_warm):.1f} MB, "
            f"max {max(after_warm):.1f} MB, growth {after_warm[-1] - after_warm[0]:+.1f} MB; "
            f"{sm['frames_scored']} frames, {sm['alerts']} alerts, {sm['events']} events, "
            f"{sm['fps']:.1f} fps"
        ]
    )
