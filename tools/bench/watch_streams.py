"""Several cameras on one box: ``watch()`` with N streams vs one, for ``bench.watch --streams N``.

Each repeat runs ``watch()`` on one MJPG video and on N videos at once (N readers, one model
session batching frames across the cameras), both as fast as the loop goes, at the same
``--batch``; the order alternates every repeat. The figure is the aggregate frames/s of the N
streams over the one stream's (ratio of the medians; goal >= 0.9). A last run replays the N
videos as live cameras (``realtime``) at a rate the box keeps up with, for each camera's
capture -> decision latency (p50 / p95) and drops.

:func:`streams_goal` turns the result into the goals table's row (s16a's ``dn2 bench`` goals
read it from the JSON this writes: ``{"ratio": ..., "target": 0.9, "met": ...}``).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Dict, List, Optional

TARGET = 0.9  # N streams' aggregate frames/s over one stream's, same batch size


def streams_bench(
    det,
    streams: List[List],
    work: Path,
    batch: int,
    repeats: int = 3,
    live_fps: Optional[float] = None,
    live_frames: int = 60,
    log=print,
) -> dict:
    """``streams``: each camera's frames. The first stream's video alone vs every stream's at
    once, alternating; then all of them live."""
    from dn2.runtime.config import WatchConfig
    from dn2.runtime.watch.loop import watch
    from dn2.tools.videoio import write_video

    videos = [write_video(work / f"stream{i}.avi", f, fps=25.0) for i, f in enumerate(streams)]

    cfg = WatchConfig(batch=batch, headless=True, stats_every=0.0)
    quiet = lambda m: None  # noqa: E731
    one: List[float] = []
    many: List[float] = []
    for r in range(repeats):
        for kind in ("one", "many") if r % 2 == 0 else ("many", "one"):
            if kind == "one":
                s = watch(det, str(videos[0]), cfg, log=quiet)
                one.append(s.fps)
            else:
                s = watch(det, [str(v) for v in videos], cfg, log=quiet)
                assert s.error is None, s.error
                many.append(s.fps)
        log(f"repeat {r}: one stream {one[-1]:.1f} f/s, {len(videos)} streams {many[-1]:.1f} f/s")
    mo, mm = statistics.median(one), statistics.median(many)
    # live: each camera at a rate the loop keeps up with (60 % of one stream's rate, shared)
    fps = live_fps or max(1.0, round(0.6 * mo / len(videos), 1))
    lives = [
        write_video(work / f"live{i}.avi", f[:live_frames], fps=fps) for i, f in enumerate(streams)
    ]
    live = watch(
        det,
        [str(v) for v in lives],
        cfg.replace(realtime=True, max_frames=live_frames),
        log=quiet,
    )
    cams = {
        c["camera"]: {
            "fps": c["fps"],
            "latency_p50_ms": c["latency_p50_ms"],
            "latency_p95_ms": c["latency_p95_ms"],
            "dropped": c["dropped"],
            "frames": c["frames_scored"],
        }
        for c in live.cameras
    }
    return {
        "streams": len(videos),
        "batch": batch,
        "repeats": repeats,
        "one_fps": one,
        "many_fps": many,
        "one_median": mo,
        "many_median": mm,
        "ratio": mm / mo,
        "pair_ratios": [m / o for o, m in zip(one, many)],
        "target": TARGET,
        "met": mm / mo >= TARGET,
        "live_fps_per_camera": fps,
        "live": cams,
        "live_p95_ms_max": max(c["latency_p95_ms"] for c in cams.values()),
    }


def streams_goal(result: Dict) -> Dict:
    """The goals table's row from :func:`streams_bench`'s result (or its JSON)."""
    return {
        "goal": f"{result['streams']} streams: aggregate frames/s >= {TARGET} x one stream "
        f"(batch {result['batch']})",
        "value": round(result["ratio"], 3),
        "target": TARGET,
        "met": bool(result["ratio"] >= TARGET),
        "per_camera_p95_ms": {k: v["latency_p95_ms"] for k, v in result["live"].items()},
    }


def streams_table(r: dict, load_before, load_after) -> str:
    f = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    n = r["streams"]
    lines = [
        f"watch loop, files, every frame, batch {r['batch']}; {r['repeats']} alternating repeats",
        "| variant | frames/s per repeat | median |",
        "|---|---|---|",
        f"| one stream | {f(r['one_fps'])} | {r['one_median']:.1f} |",
        f"| {n} streams, aggregate | {f(r['many_fps'])} | {r['many_median']:.1f} |",
        f"{n} streams / one: ratio of the medians {r['ratio']:.3f} (goal >= {TARGET}: "
        f"{'met' if r['met'] else 'NOT met'}); per-repeat ratios "
        + ", ".join(f"{x:.3f}" for x in r["pair_ratios"]),
        f"live: {n} cameras replayed at {r['live_fps_per_camera']:g} fps each",
        "| camera | frames | fps | latency p50 ms | latency p95 ms | dropped |",
        "|---|---|---|---|---|---|",
    ]
    for cid, c in r["live"].items():
        lines.append(
            f"| {cid} | {c['frames']} | {c['fps']:.1f} | {c['latency_p50_ms']:.1f} | "
            f"{c['latency_p95_ms']:.1f} | {c['dropped']} |"
        )
    lines.append(
        "load average before / after: "
        + " ".join(f"{x:.2f}" for x in load_before)
        + " / "
        + " ".join(f"{x:.2f}" for x in load_after)
    )
    return "\n".join(lines)


def streams_run(a, work: Path) -> dict:
    """``bench.watch --streams N``: fit (or load) the bundle, write N videos of different
    textile frames (MJPG), run the bench, print the table."""
    import numpy as np

    from dn2.runtime.detector import Detector
    from dn2.tools.bench.watch import _textile_paths, default_bundle, make_frames

    w, h = (int(v) for v in a.size.lower().split("x"))
    bundle = a.bundle or default_bundle(a.model, work, w, h, threads=a.threads)
    det = Detector.load(bundle, providers=a.providers, threads=a.threads, batch_size=a.batch)
    paths = _textile_paths(1000)[-a.frames * a.streams :]
    streams = [
        make_frames(paths[i * a.frames : (i + 1) * a.frames], w, h) for i in range(a.streams)
    ]
    det.embedder.embed_batch(
        np.zeros((1, det.embedder.input_size, det.embedder.input_size, 3), np.uint8)
    )
    before = os.getloadavg()
    r = streams_bench(det, streams, work, a.batch, repeats=a.repeats)
    after = os.getloadavg()
    r.update(loadavg_before=before, loadavg_after=after, goal=streams_goal(r))
    print(streams_table(r, before, after))
    return r
