"""Several cameras, one model: a reader thread per source, one scorer batching across them.

:func:`watch_many` is what :func:`dn2.runtime.watch.loop.watch` runs for more than one
source. Every camera keeps what one camera has in a single watch: its reader (with its own
reconnect backoff and drop policy), its bounded queue, its decider (hysteresis, cooldown), its
group window and drift check, its stats, snapshots (``<run>_<camera>_alert...jpg``) and
annotated video (``out_<camera>.mp4``). They share the one model session: the scorer takes
up to ``batch`` frames from whatever queues hold frames (round robin, so a busy camera cannot
starve the others), embeds them in one call, scores them against the bank in one call, and
hands each camera its own frames in order. They share the events file, the scores file and the
network sinks too; every record there names its ``camera``.

A camera whose stream ends or fails is finished on its own (its open alert closed); the others
go on until they end or the run is stopped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..config import WatchConfig
from ..errors import ConfigError, Dn2Error
from .cameras import camera_ids, per_camera_path
from .decide import Decider
from .events import EventWriter, new_run_id
from .outputs import Outputs, check_new_output
from .reader import FrameQueue, Reader
from .scorer import Scorer
from .sinks.scores import ScoresWriter
from .stats import Stats, Summary


@dataclass
class Camera:
    id: str
    src: Any
    queue: FrameQueue
    reader: Reader
    outputs: Outputs
    scorer: Scorer
    summary: Summary
    done: bool = False


def watch_many(
    bundle,
    sources,
    cfg: WatchConfig,
    *,
    stop,
    on_event,
    on_score,
    log,
    sinks,
    live,
    backoff,
    run_id,
) -> Summary:
    from .loop import check_options, fill_from_reader, load_for_watch, make_reader, open_camera

    if cfg.learn is not None:
        raise ConfigError(
            f"learn: fits a bundle from one source, found {len(sources)} sources; fit "
            "each camera's bundle first, or watch one source with --learn",
            param="learn",
        )
    check_options(cfg)
    ids = camera_ids(sources, cfg.camera_id)
    for cid in ids:
        check_new_output(per_camera_path(cfg.output_video, cid), "output_video", cfg.force)
    stop = stop or threading.Event()
    run_id = run_id or new_run_id()
    halt, ready = threading.Event(), threading.Event()
    mode = "group" if cfg.group else "frame"
    cams: List[Camera] = []
    srcs = []
    sinks = list(sinks)
    writer = scores = None
    try:
        for cid, spec in zip(ids, sources):  # every source first: a bad one fails by name
            try:
                srcs.append(open_camera(spec, cfg, stop, lambda m, c=cid: log(f"[{c}] {m}")))
            except Dn2Error as exc:
                raise type(exc)(f"camera {cid} (--source {spec}): {exc}") from None
        detector, thr, rule = load_for_watch(bundle, cfg, log)
        writer = EventWriter(cfg.events)
        scores = (
            ScoresWriter(cfg.scores, run_id, thr, force=cfg.force, cameras=True)
            if cfg.scores
            else None
        )
        for i, (cid, src) in enumerate(zip(ids, srcs)):
            clog = lambda m, c=cid: log(f"[{c}] {m}")  # noqa: E731
            out = Outputs(
                threshold=thr,
                mode=mode,
                source_name=src.name,
                clock="wall" if (src.live or not src.fps) else "source",
                snapshots=cfg.snapshots,
                output_video=per_camera_path(cfg.output_video, cid),
                video_fps=(src.fps / cfg.stride) if src.fps else 10.0,
                headless=cfg.headless,
                on_quit=stop.set,
                on_event=on_event,
                log=clog,
                run_id=run_id,
                sinks=sinks,
                scores=scores,
                live=live,
                camera=cid,
                writer=writer,
                live_frames=i == 0,  # the live page shows the first camera's picture
            )
            queue, reader = make_reader(src, cfg, detector, rule, halt, backoff, clog, ready)
            cb = None if on_score is None else (lambda i_, t, s, c=cid: on_score(i_, t, s, c))
            decider = Decider(thr, cfg.min_consecutive, cfg.cooldown)
            scorer = Scorer(detector, out, decider, cfg.group, cfg.hop or 1, Stats(), clog, cb)
            summary = Summary(source=src.name, mode=mode, threshold=thr, run_id=run_id, camera=cid)
            cams.append(Camera(cid, src, queue, reader, out, scorer, summary))
        if live is not None:
            live.attach(
                reader=cams[0].reader,
                queue=cams[0].queue,
                outputs=cams[0].outputs,
                threshold=thr,
                run_id=run_id,
                source=", ".join(c.id for c in cams),
                cameras={c.id: (c.reader, c.queue) for c in cams},
            )
        for c in cams:
            c.reader.start()
        srcs = []  # the readers close them now
        total = Stats()
        _score_all(detector, cams, cfg, total, stop, ready, log)
    finally:
        halt.set()
        for c in cams:
            if c.reader.ident is not None:  # started (a failure before the start: not)
                c.reader.join(timeout=5.0)
            c.outputs.close()
        for s in srcs:
            s.close()
        for s in sinks:
            try:
                s.close()
            except Exception as exc:  # noqa: BLE001
                log(f"{s.name} sink: closing: {type(exc).__name__}: {exc}")
        if writer is not None:
            writer.close()
        if scores is not None:
            scores.close()
    return _summary(
        cams, cfg, total, thr, run_id, stop, writer, scores, sinks, bundle, log, fill_from_reader
    )


def _take(cams: List[Camera], n: int, start: int) -> List:
    """Up to ``n`` waiting frames, one camera at a time in turn from ``start``."""
    got: List = []
    progress = True
    while len(got) < n and progress:
        progress = False
        for k in range(len(cams)):
            c = cams[(start + k) % len(cams)]
            if c.done:
                continue
            f = c.queue.take(1)
            if f:
                got.append((c, f[0]))
                progress = True
                if len(got) >= n:
                    break
    return got


def _score_all(detector, cams, cfg: WatchConfig, total: Stats, stop, ready, log) -> None:
    turn, reason = 0, "end_of_stream"
    lead = cams[0].scorer
    try:
        while True:
            if stop.is_set():
                reason = "stopped"
                break
            ready.clear()  # before looking, so a frame queued meanwhile wakes the wait
            got = _take(cams, cfg.batch, turn)
            turn = (turn + 1) % len(cams)
            if got:
                frames = [f for _, f in got]
                emb, scores, heats = lead.compute(frames)
                for c in cams:
                    idx = [i for i, (cc, _) in enumerate(got) if cc is c]
                    if idx:
                        c.scorer.apply(
                            [frames[i] for i in idx],
                            None if emb is None else emb[idx],
                            None if scores is None else np.asarray(scores)[idx],
                            [heats[i] for i in idx],
                        )
                total.record([f.captured for f in frames])
            for c in cams:  # a camera whose stream ended: closed on its own, the rest go on
                if not c.done and c.queue.finished:
                    c.done = True
                    c.scorer.finish("end_of_stream")
                    log(f"[{c.id}] stream ended ({c.reader.stats.error or 'end of stream'})")
            if all(c.done for c in cams):
                break
            if not got:
                ready.wait(0.1)
            if total.due(cfg.stats_every):
                log(_line(cams, total))
    except KeyboardInterrupt:  # library use without the CLI's signal handlers: a clean stop
        stop.set()
        reason = "stopped"
    except BaseException:
        for c in cams:
            if not c.done:
                c.scorer.finish("error")
        raise
    for c in cams:
        if not c.done:
            c.scorer.finish(reason)


def _line(cams, total: Stats) -> str:
    per = ", ".join(
        f"{c.id} {c.scorer.stats.recent_fps():.1f} fps drop {c.queue.dropped}" for c in cams
    )
    return f"[dn2-watch] {total.recent_fps():.1f} fps in all, {total.frames} frames; {per}"


def _summary(cams, cfg, total, thr, run_id, stop, writer, scores, sinks, bundle, log, fill):
    """Each camera's summary, and the run's: sums, the latency over every frame, and each
    camera's as ``cameras``."""
    s = Summary(
        source=f"{len(cams)} cameras",
        mode="group" if cfg.group else "frame",
        threshold=thr,
        events_path=cfg.events,
        bundle=str(bundle) if isinstance(bundle, (str, Path)) else None,
        run_id=run_id,
    )
    total.fill(s)
    errors, unwritten = [], []
    for c in cams:
        cs = c.summary
        fill(cs, c.reader, c.queue)
        c.scorer.stats.fill(cs)
        cs.alerts, cs.stopped = c.scorer.decider.alerts, stop.is_set()
        cs.events = c.outputs.count
        cs.unwritten = c.outputs.problems()
        if c.scorer.drift is not None and c.scorer.drift.said is not None:
            cs.drift = c.scorer.drift.said["message"]
        for k in (
            "frames_read",
            "groups_scored",
            "dropped",
            "failures",
            "reconnects",
            "skipped_items",
            "lost_frames",
            "partial_frames",
            "alerts",
        ):
            setattr(s, k, getattr(s, k) + getattr(cs, k))
        if cs.error:
            errors.append(f"{c.id}: {cs.error}")
        s.problems += [f"{c.id}: {p}" for p in cs.problems]
        unwritten += [f"{c.id}: {u}" for u in cs.unwritten]
        if cs.drift:
            s.drift = (s.drift + "\n  " if s.drift else "") + f"{c.id}: {cs.drift}"
        s.cameras.append(cs.to_dict())
    s.error = "; ".join(errors) or None
    s.stopped = stop.is_set()
    s.events = writer.count
    for shared in [writer, *sinks] + ([scores] if scores is not None else []):
        unwritten += shared.problems()
    s.unwritten = unwritten
    s.sink_backlog: Dict[str, int] = {x.name: x.backlog() for x in sinks}
    for line in unwritten:
        log(f"not written: {line}")
    return s
