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
from typing import Any, Callable, Dict, Optional, Sequence, Union

from ..config import WatchConfig
from ..errors import BundleError, Dn2Error
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


def _check(name: str, value, low, what: str = "") -> None:
    if value is not None and value < low:
        raise Dn2Error(f"{name} must be >= {low}{what}, found {value}")


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
    source: Union[str, int, Source],
    *,
    batch: int = 8,
    stride: int = 1,
    group: Optional[int] = None,
    hop: Optional[int] = None,
    threshold: Optional[float] = None,
    min_consecutive: int = 3,
    cooldown: float = 0.0,
    events: Optional[str] = None,
    snapshots: Optional[str] = None,
    output_video: Optional[str] = None,
    headless: bool = WatchConfig.headless,
    stats_every: float = WatchConfig.stats_every,
    learn: Optional[str] = None,
    learn_bundle: Optional[str] = None,
    providers: str = "auto",
    threads: Optional[int] = None,
    max_frames: Optional[int] = None,
    queue_size: Optional[int] = None,
    realtime: bool = False,
    reconnect_attempts: Optional[int] = None,
    reconnect_max_delay: float = 10.0,
    backoff: Optional[Backoff] = None,
    folder_fps: float = 10.0,
    stop: Optional[threading.Event] = None,
    on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
    on_score: Optional[Callable[[int, float, float], None]] = None,
    log: Optional[Callable[[str], None]] = None,
    scores: Optional[str] = None,
    force: bool = False,
    sinks: Sequence[Any] = (),
    live: Any = None,
    run_id: Optional[str] = None,
    trusted_key: Optional[str] = None,
    connect_timeout: float = 30.0,
) -> Summary:
    """Watch ``source`` with the bundle at ``bundle`` until the stream ends or ``stop`` is set.

    ``bundle`` is a bundle folder or a loaded Detector; with ``learn`` ("30", "30s" seconds or
    "300f" frames) it may instead be a dn2 model (.onnx): a bundle is fitted from the first
    frames (see :mod:`dn2.runtime.watch.learn`) and the watch goes on with it. Events go to
    ``events`` (JSON lines), peak frames to ``snapshots``, the annotated stream to
    ``output_video``. ``on_event(event_dict)`` sees each event as it is written,
    ``on_score(frame, timestamp, score)`` every frame (or group) score, ``scores`` (a file,
    ``-`` for stdout) gets one row per score (:mod:`dn2.runtime.watch.sinks.scores`);
    ``sinks`` are extra event sinks (MQTT, webhook: :mod:`dn2.runtime.watch.sinks`), ``live``
    a status server's state (:mod:`dn2.runtime.watch.serve`). Every run has a ``run_id`` (in
    events, scores and snapshot names); existing outputs are never overwritten unless
    ``force``; an output that fails mid-run is reported in ``Summary.unwritten``, never
    raised. A failing source is
    reopened after 0.5 s, 1 s, 2 s ... up to ``reconnect_max_delay``; ``reconnect_attempts``
    failures in a row end the stream (default: never for live sources, 3 for files;
    ``backoff`` overrides all three). Returns a :class:`Summary`; raises :class:`Dn2Error` on
    bad options, a bundle that does not load or a source that cannot open (a live source
    that is not up yet is retried with the same backoff for ``connect_timeout`` seconds,
    :mod:`dn2.runtime.watch.connect`). ``trusted_key``
    (default $DN2_TRUSTED_KEY): a public key PEM; only a bundle signed by it is watched.
    """
    log = log or _log.info
    if learn is not None:
        from ..signing import trusted_key_path

        if trusted_key_path(trusted_key):
            raise BundleError(
                "--learn fits an unsigned bundle on this box, but a trusted key "
                "is configured (--trusted-key / DN2_TRUSTED_KEY): fit and sign "
                "elsewhere, or run without the key"
            )
    _validate(
        batch=batch,
        stride=stride,
        group=group,
        hop=hop,
        max_frames=max_frames,
        queue_size=queue_size,
        reconnect_attempts=reconnect_attempts,
        reconnect_max_delay=reconnect_max_delay,
        learn=learn,
    )
    check_new_output(output_video, "--output-video", force)
    check_new_output(scores, "--scores", force)
    if (
        learn_bundle
        and not force
        and Path(learn_bundle).is_dir()
        and any(Path(learn_bundle).iterdir())
    ):
        raise Dn2Error(
            f"--learn-bundle {learn_bundle} exists and is not empty (an earlier "
            "run's bundle?); pass --force to replace it, or give a new folder"
        )
    stop = stop or threading.Event()
    run_id = run_id or new_run_id()
    halt = threading.Event()  # stops the reader: set at the end, whatever the reason
    mode = "group" if group else "frame"
    # the source first: a wrong --source fails at once, before seconds of model loading
    src = open_live(
        source,
        connect_timeout=connect_timeout,
        max_delay=reconnect_max_delay,
        realtime=realtime,
        folder_fps=folder_fps,
        log=log,
        stop=stop,
    )
    reader = outputs = tmp = None
    sinks = list(sinks)
    try:
        detector, thr, rule = None, float("nan"), None
        if learn is None:
            detector = load_detector(bundle, providers, threads, batch, trusted_key)
            thr, rule = _threshold(detector, threshold, group), detector.embedder.meta.resize
            if detector.manifest.score.jpeg_draft:
                log(
                    "note: this bundle was fitted with --jpeg-draft (JPEG files decoded at "
                    "reduced scale); watched frames are decoded at full size, which shifts "
                    "embeddings slightly (cosine >= 0.9975 on real photos); refit without "
                    "--jpeg-draft for a camera"
                )
        else:
            from .learn import model_rule

            rule = model_rule(bundle)
        summary = Summary(
            source=src.name,
            mode=mode,
            threshold=thr,
            events_path=events,
            bundle=str(bundle) if isinstance(bundle, (str, Path)) else None,
            run_id=run_id,
        )
        writer = ScoresWriter(scores, run_id, thr, force=force) if scores else None
        outputs = Outputs(
            threshold=thr,
            mode=mode,
            source_name=src.name,
            clock="wall" if (src.live or not src.fps) else "source",
            events=events,
            snapshots=snapshots,
            output_video=output_video,
            video_fps=(src.fps / stride) if src.fps else 10.0,
            headless=headless,
            on_quit=stop.set,
            on_event=on_event,
            log=log,
            run_id=run_id,
            sinks=sinks,
            scores=writer,
            live=live,
        )
        sinks = []  # outputs closes them now
        if backoff is None:
            backoff = Backoff(
                initial=min(0.5, reconnect_max_delay),
                max_delay=reconnect_max_delay,
                max_attempts=reconnect_attempts
                if reconnect_attempts is not None
                else (None if src.live else 3),
            )
        queue = FrameQueue(queue_size or max(4, 2 * batch))
        from ..images import prepare

        views = getattr(detector, "views", False)  # view / patch bundles prepare in the scorer
        reader = Reader(
            src,
            queue,
            halt,
            stride=stride,
            max_frames=max_frames,
            prepare=None if views else (lambda img: prepare(img, rule)),
            backoff=backoff,
            log=log,
        )
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
        if learn is not None:
            from .learn import learn_from_queue

            if learn_bundle is None:
                tmp = tempfile.TemporaryDirectory(prefix="dn2-learn-")
            detector, learned, pending, groups = learn_from_queue(
                bundle,
                queue,
                learn,
                output=learn_bundle or str(Path(tmp.name) / "bundle"),
                group=group,
                batch=batch,
                providers=providers,
                threads=threads,
                stop=stop,
                log=log,
            )
            thr = float(threshold) if threshold is not None else learned
            summary.threshold = thr
            outputs.set_threshold(thr)
            summary.bundle = learn_bundle  # None: the learned bundle was temporary
        score_loop(
            detector,
            queue,
            reader,
            outputs,
            summary,
            Decider(thr, min_consecutive, cooldown),
            batch,
            group,
            hop or 1,
            stats_every,
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
    st = reader.stats
    summary.stopped, summary.dropped, summary.error = stop.is_set(), queue.dropped, st.error
    summary.frames_read, summary.failures = st.frames, st.failures
    summary.reconnects, summary.skipped_items = st.reconnects, st.skipped_items
    summary.lost_frames, summary.partial_frames = st.lost_frames, st.partial_frames
    summary.problems = [f"{what}: {why}" for what, why in st.recent_problems]
    summary.events = outputs.writer.count
    summary.unwritten = outputs.problems()
    summary.sink_backlog = outputs.backlog()
    for line in summary.unwritten:
        log(f"not written: {line}")
    return summary


def _validate(
    *,
    batch,
    stride,
    group,
    hop,
    max_frames,
    queue_size,
    reconnect_attempts,
    reconnect_max_delay,
    learn,
) -> None:
    _check("--batch", batch, 1)
    _check("--stride", stride, 1)
    _check("--group", group, 2, " (a group pools several frames)")
    _check("--hop", hop, 1)
    _check("--max-frames", max_frames, 1)
    _check("--queue-size", queue_size, 1)
    _check("--reconnect-attempts", reconnect_attempts, 0)
    _check("--reconnect-max-delay", reconnect_max_delay, 0.05, " seconds")
    if hop is not None and group is None:
        raise Dn2Error("--hop needs --group M (it is the step between scored groups)")
    if learn is not None:
        from .learn import parse_learn

        parse_learn(learn)


def _threshold(detector, override: Optional[float], group: Optional[int]) -> float:
    if group:
        gthr = getattr(detector, "group_threshold", None)
        if gthr is None:
            raise Dn2Error(
                "--group needs a bundle with a group bank (fit it with "
                "dn2-fit --group-size M); this bundle has none"
            )
        m = getattr(detector, "manifest", None)
        sizes = (m.group.sizes if m is not None and m.group is not None else None) or (None, None)
        if sizes[0] is not None and sizes[0] == sizes[1] and int(sizes[0]) != int(group):
            raise Dn2Error(
                f"--group {group}: the bundle's normal groups have {sizes[0]} "
                f"images each; use --group {sizes[0]} (means of other sizes "
                "spread differently, so the bundle's group threshold would not hold)"
            )
        return float(override) if override is not None else float(gthr)
    return float(override) if override is not None else float(detector.threshold)
