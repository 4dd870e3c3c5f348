"""Videos and streams as normal input to ``dn2-fit``: frames from the camera you deploy.

``dn2-fit MODEL line.mp4 rtsp://cam/1 0 "... ! appsink" folder/ --every 5 --seconds 60`` takes
the frames of video files, camera indices, RTSP/HTTP URLs and GStreamer pipelines beside image
files and folders. A stream is read by the watch loop's own reader (``dn2.runtime.watch``:
reconnect with backoff, ``--every N`` is its stride) and embedded the way ``watch --learn``
embeds its first frames (``dn2.runtime.watch.learn.collect_frames``).

Neighbouring frames are near copies of each other, so frames are calibrated in contiguous time
blocks, each scored against a bank of the other blocks (``learn.blocked_scores``), not by
leave-one-out; with ``--group-size M`` the normal groups are the sliding windows of M
consecutive frames, as ``watch --group M`` scores them (``learn.pool_windows``).
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import Dn2Error

VIDEO_SUFFIXES = (
    ".avi",
    ".mp4",
    ".mkv",
    ".mov",
    ".m4v",
    ".webm",
    ".mjpg",
    ".mjpeg",
    ".mpg",
    ".mpeg",
    ".ts",
    ".wmv",
    ".flv",
    ".h264",
    ".h265",
    ".264",
    ".265",
)
COLOR_FRAMES = 16  # frames looked at to decide gray vs colour for a stream-only fit


def is_stream(spec: str) -> bool:
    """A video file, camera index, stream URL or GStreamer pipeline (not an image path)."""
    from .watch.sources import classify

    s = str(spec)
    if os.path.isdir(s):
        return False
    if os.path.exists(s):
        return s.lower().endswith(VIDEO_SUFFIXES)
    return classify(s) in ("camera", "url", "gstreamer") or s.lower().endswith(VIDEO_SUFFIXES)


def split_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(image inputs, stream inputs); a named path that does not exist is an error."""
    import glob

    images, streams = [], []
    for item in inputs:
        s = str(item)
        if is_stream(s):
            streams.append(s)
            continue
        if not os.path.lexists(s) and not glob.has_magic(s):
            raise Dn2Error(
                f"normal input {s}: expected an image file, a folder, a glob, a "
                "video file, a camera index, a stream URL or a GStreamer pipeline, "
                "found no such path"
            )
        images.append(s)
    return images, streams


def check_stream_args(
    streams: Sequence[str], every: int, max_frames: Optional[int], seconds: Optional[float]
) -> None:
    from .watch.sources import classify

    if int(every) < 1:
        raise Dn2Error(f"every: expected >= 1, found {every}", param="every")
    if max_frames is not None and int(max_frames) < 1:
        raise Dn2Error(f"max_frames: expected >= 1, found {max_frames}", param="max_frames")
    if seconds is not None and float(seconds) <= 0:
        raise Dn2Error(f"seconds: expected > 0, found {seconds}", param="seconds")
    live = [s for s in streams if classify(s) in ("camera", "url", "gstreamer")]
    if live and max_frames is None and seconds is None:
        raise Dn2Error(
            f"live source {live[0]}: expected max_frames N or seconds S to say "
            "when to stop collecting normal frames, found neither",
            params=("max_frames", "seconds"),
        )


def check_frame_options(kmeans, clean, group_dirs, pooling: str) -> None:
    """Video frames are calibrated in time blocks: no k-means, cleaning or group folders."""
    if kmeans is not None or clean or group_dirs or pooling != "mean":
        raise Dn2Error(
            "video / stream inputs: expected no kmeans, clean, group_dirs or "
            "pooling max (frames are calibrated in time blocks), found them",
            params=("kmeans", "clean", "group_dirs", "pooling"),
        )


def collect_stream(
    spec: str,
    embedder,
    *,
    every: int = 1,
    max_frames: Optional[int] = None,
    seconds: Optional[float] = None,
    batch: int = 8,
    on_first: Optional[Callable] = None,
    log: Callable[[str], None] = print,
    connect_timeout: float = 30.0,
) -> np.ndarray:
    """Embeddings [T, D] of the frames of one stream, in time order."""
    from .images import prepare
    from .watch.connect import open_live
    from .watch.learn import MAX_LEARN_FRAMES, collect_frames
    from .watch.reader import Backoff, FrameQueue, Reader

    src = open_live(spec, connect_timeout=connect_timeout, log=log)
    queue = FrameQueue(max(4, 2 * batch))
    halt, stop = threading.Event(), threading.Event()
    rule = embedder.rule
    reader = Reader(
        src,
        queue,
        halt,
        stride=int(every),
        max_frames=max_frames,
        prepare=lambda img: prepare(img, rule),
        backoff=Backoff(max_attempts=5 if src.live else 3),
        log=log,
    )
    reader.start()
    amount = (
        ("seconds", float(seconds))
        if seconds is not None
        else ("frames", int(max_frames or MAX_LEARN_FRAMES))
    )
    try:
        emb, _ = collect_frames(
            queue,
            amount,
            embedder.embed_batch,
            batch,
            stop,
            log,
            on_first,
            what=f"normal frames from {src.name}",
        )
    finally:
        halt.set()
        reader.join(timeout=5.0)
    if reader.stats.error:
        log(f"{src.name}: {reader.stats.error}; fitting on the {len(emb)} frames read")
    return emb


def collect_streams(
    streams: Sequence[str],
    emb,
    colour: Dict,
    *,
    every: int,
    max_frames: Optional[int],
    seconds: Optional[float],
    batch: int,
    say: Callable[[str], None],
    connect_timeout: float = 30.0,
):
    """(embeddings [T, D], names, segments [T] source index, info) over every stream.

    ``emb`` is fit's lazy embedder wrapper; when ``colour`` is still to be decided (mode
    "auto"), the first frames of the first stream decide it (``dn2.runtime.color``)."""
    from . import color as C

    def decide(frames) -> None:
        if colour["mode"] == "auto":
            colour["detected"] = C.detect([f.image for f in frames[:COLOR_FRAMES]])
            colour["mode"] = colour["detected"]["mode"]
            say(
                f"colour: the first {colour['detected']['sampled']} frames are "
                f"{'monochrome: scoring in gray' if colour['mode'] == 'gray' else 'colour'}"
            )
        emb.gray = colour["mode"] == "gray"
        emb.embedder.gray = emb.gray

    parts, names, segs, info = [], [], [], []
    for i, spec in enumerate(streams):
        x = collect_stream(
            spec,
            emb.embedder,
            every=every,
            max_frames=max_frames,
            seconds=seconds,
            batch=batch,
            on_first=decide,
            log=say,
            connect_timeout=connect_timeout,
        )
        say(f"{spec}: {len(x)} frames embedded (every {every})")
        parts.append(x)
        names += [f"{spec} frame {j * every}" for j in range(len(x))]
        segs.append(np.full(len(x), i, np.int64))
        info.append({"source": spec, "frames": int(len(x))})
    return np.vstack(parts), names, np.concatenate(segs), info


def window_groups(x: np.ndarray, segments: np.ndarray, size: int) -> np.ndarray:
    """Pooled windows of ``size`` consecutive frames, never straddling two sources."""
    from .watch.learn import pool_windows

    out = [pool_windows(x[segments == s], size) for s in np.unique(segments)]
    return np.vstack(out) if out else np.zeros((0, x.shape[1]), np.float32)


def embed_inputs(
    emb,
    images,
    colour: Dict,
    *,
    every: int = 1,
    max_frames: Optional[int] = None,
    seconds: Optional[float] = None,
    batch: int = 8,
    say: Callable[[str], None] = lambda m: None,
    connect_timeout: float = 30.0,
):
    """Embed fit's normal inputs: (x, names, failed, temporal [N] bool, segments, streams).

    Image files and folders go through ``emb.inputs``; streams through :func:`collect_streams`
    (their rows are ``temporal``). ``colour`` is fit's colour section; mode "auto" is decided
    by the first frames when there are no image files to decide it."""
    image_in, streams = split_inputs(images)
    if streams:
        check_stream_args(streams, every, max_frames, seconds)
    x, names, failed = (
        emb.inputs(image_in) if image_in else (np.zeros((0, emb.embedder.dim), np.float32), [], [])
    )
    if image_in:
        say(f"embedded {len(x)} images; {len(failed)} bad files skipped")
    temporal = np.zeros(len(x), bool)
    segs, info = np.zeros(0, np.int64), []
    if streams:
        xv, vnames, segs, info = collect_streams(
            streams,
            emb,
            colour,
            every=every,
            max_frames=max_frames,
            seconds=seconds,
            batch=batch,
            say=say,
            connect_timeout=connect_timeout,
        )
        x = np.vstack([x, xv]) if len(x) else xv
        names = list(names) + vnames
        temporal = np.concatenate([temporal, np.ones(len(xv), bool)])
    return x, names, failed, temporal, segs, info


def temporal_calibration(
    bank, x: np.ndarray, temporal: np.ndarray, labels: np.ndarray, bank_labels: np.ndarray, k: int
) -> Tuple[np.ndarray, str]:
    """Calibration scores: frames by blocked hold-out, images by grouped leave-one-out."""
    from .dupes import grouped_scores
    from .watch.learn import BLOCKS, blocked_scores

    parts = [blocked_scores(x[temporal], k=k)]
    how = (
        f"video frames: blocked hold-out ({BLOCKS} contiguous time blocks, each scored "
        "against the frames of the others)"
    )
    if (~temporal).any():
        parts.append(grouped_scores(bank, x[~temporal], k, labels[~temporal], bank_labels))
        how += "; images: leave-one-out without the image and its duplicates"
    return np.concatenate(parts), how


def window_section(
    xt: np.ndarray,
    segments: np.ndarray,
    size: int,
    k: int,
    fpr: float,
    index: str,
    l2norm: bool,
    seed: int,
):
    """(group manifest section, group bank) from sliding windows of consecutive frames."""
    from . import groups as G
    from .bank import build_bank
    from .manifest import GroupCalib, Threshold
    from .threshold import conformal_quantile, quantile_table
    from .watch.learn import BLOCKS, blocked_scores

    windows = window_groups(xt, segments, int(size))
    if len(windows) < BLOCKS * 2:
        raise Dn2Error(
            f"group_size {size}: {len(xt)} frames give {len(windows)} windows; "
            f"expected at least {BLOCKS * 2} (collect more frames)",
            param="group_size",
        )
    gk = min(k, len(windows) - 1)
    calib = blocked_scores(xt, k=gk, group=int(size))
    th = conformal_quantile(calib, fpr)
    members = [np.arange(i, i + int(size)) for i in range(0, len(xt) - int(size) + 1)]
    traces = G.cov_traces(xt, members)
    section = GroupCalib(
        pooling="mean",
        k=gk,
        size=int(size),
        sizes=(int(size), int(size)),
        n_groups=len(windows),
        source="windows",
        threshold=Threshold.of(
            {
                "value": th["value"],
                "method": "fpr",
                "fpr": fpr,
                "quantiles": quantile_table(calib),
                "conformal": th,
                "calibration": f"blocked hold-out of windows ({BLOCKS} time blocks)",
                "n_calibration": int(calib.size),
            },
            "group.threshold",
        ),
        cov_trace_threshold=Threshold.of(
            {
                "value": conformal_quantile(traces, fpr)["value"],
                "method": "fpr",
                "fpr": fpr,
                "quantiles": quantile_table(traces),
            },
            "group.cov_trace_threshold",
        ),
        extra={"seed": int(seed), "l2norm_per_image": bool(l2norm)},
    )
    return section, build_bank(windows, index)
