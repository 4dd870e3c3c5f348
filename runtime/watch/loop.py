"""The camera loop: source -> reader thread -> bounded queue -> batched scorer -> decisions.

:func:`watch` is the library entry point (``dn2-watch`` is a thin CLI over it). The reader
thread decodes and prepares frames (resize + centre crop to the model input) in parallel with
the scorer, which takes every frame already waiting (up to ``batch``) in one onnxruntime call,
scores them against the bundle's bank (per frame) or pools the last ``group`` embeddings and
scores the pool against the bundle's group bank every ``hop`` frames, and feeds the scores to
the hysteresis :class:`~dn2.runtime.watch.decide.Decider`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

from ..config import WatchConfig
from ..errors import BundleError, ConfigError, Dn2Error
from .cameras import expand_sources
from .connect import open_live
from .decide import Decider
from .events import new_run_id
from .outputs import Outputs, check_new_output
from .reader import Backoff, FrameQueue, Reader
from .scorer import score_loop
from .sinks.scores import ScoresWriter
from .sources import Source
from .stats import Summary

_log = logging.getLogger("dn2.watch")


def load_detector(bundle, providers="auto", threads=None, batch: int = 8, trusted_key=None):
    """A Detector from a bundle folder (or the Detector itself)."""
    from ..detector import Detector

    if isinstance(bundle, (str, Path)):
        return Detector.load(
            str(bundle),
            providers=providers,
            threads=threads,
            batch_size=batch,
            trusted_key=trusted_key,
        )
    return bundle


def watch(
    bundle: Union[str, Path, Any],
    source: Union[str, int, Source, Sequence[Union[str, int, Source]]],
    config: Union[WatchConfig, Mapping[str, Any], None] = None,
    *,
    stop: Optional[threading.Event] = None,
    on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
    on_score: Optional[Callable[[int, float, float], None]] = None,
    log: Optional[Callable[[str], None]] = None,
    sinks: Sequence[Any] = (),
    live: Any = None,
    backoff: Optional[Backoff] = None,
    run_id: Optional[str] = None,
) -> Summary:
    """Watch ``source`` with the bundle at ``bundle`` until the stream ends or ``stop`` is set.

    ``config`` (a :class:`~dn2.runtime.config.WatchConfig`, or a mapping of its fields) holds
    every choice; the keywords are the run's live parts. ``source`` is one source, several
    (a list, or a ``.streams`` file of one source per line: :mod:`.cameras`), watched at once
    by :mod:`.multi` with one reader per camera and one model session batching across them.

    ``bundle`` is a bundle folder or a loaded Detector; with ``config.learn`` ("30", "30s"
    seconds or "300f" frames) it may instead be a dn2 model (.onnx): a bundle is fitted from
    the first frames (see :mod:`dn2.runtime.watch.learn`) and the watch goes on with it.
    Events go to ``config.events`` (JSON lines), peak frames to ``snapshots``, the annotated
    stream to ``output_video``. ``on_event(event_dict)`` sees each event as it is written,
    ``on_score(frame, timestamp, score)`` every frame (or group) score (several cameras:
    ``on_score(frame, timestamp, score, camera)``), ``config.scores`` (a
    file, ``-`` for stdout) gets one row per score (:mod:`dn2.runtime.watch.sinks.scores`);
    ``sinks`` are extra event sinks (MQTT, webhook: :mod:`dn2.runtime.watch.sinks`), ``live``
    a status server's state (:mod:`dn2.runtime.watch.serve`). Every run has a ``run_id`` (in
    events, scores and snapshot names); existing outputs are never overwritten unless
    ``force``; an output that fails mid-run is reported in ``Summary.unwritten``, never
    raised. A failing source is reopened after 0.5 s, 1 s, 2 s ... up to
    ``reconnect_max_delay``; ``reconnect_attempts`` failures in a row end the stream
    (default: never for live sources, 3 for files; ``backoff`` overrides all three). Returns
    a :class:`Summary`; raises :class:`Dn2Error` on bad options (a ``ConfigError`` naming
    the field), a bundle that does not load or a source that cannot open (a live source
    that is not up yet is retried with the same backoff for ``connect_timeout`` seconds,
    :mod:`dn2.runtime.watch.connect`). ``trusted_key`` (default $DN2_TRUSTED_KEY): a public
    key PEM; only a bundle signed by it is watched.
    """
    cfg = as_config(config)
    log = log or _log.info
    sources = expand_sources(source)
    live_parts = dict(
        stop=stop,
        on_event=on_event,
        on_score=on_score,
        log=log,
        sinks=sinks,
        live=live,
        backoff=backoff,
        run_id=run_id,
    )
    if len(sources) > 1 or cfg.camera_id and len(cfg.camera_id) > 1:
        from .multi import watch_many

        return watch_many(bundle, sources, cfg, **live_parts)
    return _watch_one(bundle, sources[0], cfg, **live_parts)


def as_config(config) -> WatchConfig:
    if config is None:
        return WatchConfig()
    if isinstance(config, WatchConfig):
        return config
    if isinstance(config, Mapping):
        return WatchConfig.from_mapping(config)
    raise ConfigError(
        f"config: expected a WatchConfig or a mapping of its fields, found {type(config).__name__}",
        param="config",
    )


def check_options(cfg: WatchConfig) -> None:
    """What the config cannot check alone: a trusted key with --learn, the --learn spec, and
    outputs that would overwrite an earlier run's."""
    if cfg.learn is not None:
        from ..signing import trusted_key_path
        from .learn import parse_learn

        if trusted_key_path(cfg.trusted_key):
            raise BundleError(
                "learn fits an unsigned bundle on this box, but a trusted key "
                "is configured (trusted_key / DN2_TRUSTED_KEY): fit and sign "
                "elsewhere, or run without the key",
                params=("learn", "trusted_key"),
            )
        parse_learn(cfg.learn)
    check_new_output(cfg.scores, "scores", cfg.force)
    lb = cfg.learn_bundle
    if lb and not cfg.force and Path(lb).is_dir() and any(Path(lb).iterdir()):
        raise Dn2Error(
            f"learn_bundle {lb} exists and is not empty (an earlier "
            "run's bundle?); pass force to replace it, or give a new folder",
            params=("learn_bundle", "force"),
        )


def load_for_watch(bundle, cfg: WatchConfig, log):
    """The detector, its threshold (or the group threshold) and its resize rule."""
    detector = load_detector(bundle, cfg.providers, cfg.threads, cfg.batch, cfg.trusted_key)
    thr = _threshold(detector, cfg.threshold, cfg.group)
    if detector.manifest.score.jpeg_draft:
        log(
            "note: this bundle was fitted with --jpeg-draft (JPEG files decoded at "
            "reduced scale); watched frames are decoded at full size, which shifts "
            "embeddings slightly (cosine >= 0.9975 on real photos); refit without "
            "--jpeg-draft for a camera"
        )
    return detector, thr, detector.embedder.meta.resize


def open_camera(spec, cfg: WatchConfig, stop: threading.Event, log):
    """The source, opened (a live one not up yet is retried for ``connect_timeout``)."""
    return open_live(
        spec,
        connect_timeout=cfg.connect_timeout,
        max_delay=cfg.reconnect_max_delay,
        realtime=cfg.realtime,
        folder_fps=cfg.folder_fps,
        log=log,
        stop=stop,
    )


def make_reader(src, cfg: WatchConfig, detector, rule, halt, backoff, log, ready=None):
    """The source's bounded queue and its reader thread (not started)."""
    from ..images import prepare

    if backoff is None:
        backoff = Backoff(
            initial=min(0.5, cfg.reconnect_max_delay),
            max_delay=cfg.reconnect_max_delay,
            max_attempts=cfg.reconnect_attempts
            if cfg.reconnect_attempts is not None
            else (None if src.live else 3),
        )
    queue = FrameQueue(cfg.queue_size or max(4, 2 * cfg.batch), ready)
    views = getattr(detector, "views", False)  # view / patch bundles prepare in the scorer
    reader = Reader(
        src,
        queue,
        halt,
        stride=cfg.stride,
        max_frames=cfg.max_frames,
        prepare=None if views else (lambda img: prepare(img, rule)),
        backoff=backoff,
        log=log,
    )
    return queue, reader


def fill_from_reader(summary: Summary, reader: Reader, queue: FrameQueue) -> None:
    st = reader.stats
    summary.dropped, summary.error = queue.dropped, st.error
    summary.frames_read, summary.failures = st.frames, st.failures
    summary.reconnects, summary.skipped_items = st.reconnects, st.skipped_items
    summary.lost_frames, summary.partial_frames = st.lost_frames, st.partial_frames
    summary.problems = [f"{what}: {why}" for what, why in st.recent_problems]


def _watch_one(
    bundle, source, cfg: WatchConfig, *, stop, on_event, on_score, log, sinks, live, backoff, run_id
) -> Summary:
    check_options(cfg)
    check_new_output(cfg.output_video, "output_video", cfg.force)
    stop = stop or threading.Event()
    run_id = run_id or new_run_id()
    halt = threading.Event()  # stops the reader: set at the end, whatever the reason
    mode = "group" if cfg.group else "frame"
    # the source first: a wrong --source fails at once, before seconds of model loading
    src = open_camera(source, cfg, stop, log)
    reader = outputs = tmp = None
    sinks = list(sinks)
    try:
        detector, thr, rule = None, float("nan"), None
        if cfg.learn is None:
            detector, thr, rule = load_for_watch(bundle, cfg, log)
        else:
            from .learn import model_rule

            rule = model_rule(bundle)
        summary = Summary(
            source=src.name,
            mode=mode,
            threshold=thr,
            events_path=cfg.events,
            bundle=str(bundle) if isinstance(bundle, (str, Path)) else None,
            run_id=run_id,
        )
        writer = ScoresWriter(cfg.scores, run_id, thr, force=cfg.force) if cfg.scores else None
        outputs = Outputs(
            threshold=thr,
            mode=mode,
            source_name=src.name,
            clock="wall" if (src.live or not src.fps) else "source",
            events=cfg.events,
            snapshots=cfg.snapshots,
            output_video=cfg.output_video,
            video_fps=(src.fps / cfg.stride) if src.fps else 10.0,
            headless=cfg.headless,
            on_quit=stop.set,
            on_event=on_event,
            log=log,
            run_id=run_id,
            sinks=sinks,
            scores=writer,
            live=live,
        )
        sinks = []  # outputs closes them now
        queue, reader = make_reader(src, cfg, detector, rule, halt, backoff, log)
        if live is not None:
            live.attach(
                reader=reader,
                queue=queue,
                outputs=outputs,
                threshold=thr,
                run_id=run_id,
                source=src.name,
            )
        reader.start()
        pending, groups = [], None
        if cfg.learn is not None:
            from .learn import learn_from_queue

            if cfg.learn_bundle is None:
                tmp = tempfile.TemporaryDirectory(prefix="dn2-learn-")
            detector, learned, pending, groups = learn_from_queue(
                bundle,
                queue,
                cfg.learn,
                output=cfg.learn_bundle or str(Path(tmp.name) / "bundle"),
                group=cfg.group,
                batch=cfg.batch,
                providers=cfg.providers,
                threads=cfg.threads,
                stop=stop,
                log=log,
            )
            thr = float(cfg.threshold) if cfg.threshold is not None else learned
            summary.threshold = thr
            outputs.set_threshold(thr)
            summary.bundle = cfg.learn_bundle  # None: the learned bundle was temporary
        score_loop(
            detector,
            queue,
            reader,
            outputs,
            summary,
            Decider(thr, cfg.min_consecutive, cfg.cooldown),
            cfg.batch,
            cfg.group,
            cfg.hop or 1,
            cfg.stats_every,
            stop,
            log,
            pending,
            on_score,
            groups,
        )
    finally:
        halt.set()
        if reader is not None:
            reader.join(timeout=5.0)
        else:
            src.close()
        if outputs is not None:
            outputs.close()
        for s in sinks:  # built but never handed to outputs (a failure before it)
            s.close(0.0)
        if tmp is not None:
            tmp.cleanup()
    fill_from_reader(summary, reader, queue)
    summary.stopped = stop.is_set()
    summary.events = outputs.writer.count
    summary.unwritten = outputs.problems()
    summary.sink_backlog = outputs.backlog()
    for line in summary.unwritten:
        log(f"not written: {line}")
    return summary


def _threshold(detector, override: Optional[float], group: Optional[int]) -> float:
    if group:
        gthr = getattr(detector, "group_threshold", None)
        if gthr is None:
            raise Dn2Error(
                "group: expected a bundle fitted with dn2 fit --group-size M (it holds the "
                "normal means of M frames), found a bundle without them",
                param="group",
            )
        m = getattr(detector, "manifest", None)
        sizes = (m.group.sizes if m is not None and m.group is not None else None) or (None, None)
        if sizes[0] is not None and sizes[0] == sizes[1] and int(sizes[0]) != int(group):
            raise Dn2Error(
                f"group={group}: expected {sizes[0]}, the size of the bundle's normal groups "
                "(means of other sizes spread differently, so the threshold of its groups "
                f"would not hold); use group={sizes[0]}",
                param="group",
            )
        return float(override) if override is not None else float(gthr)
    return float(override) if override is not None else float(detector.threshold)
