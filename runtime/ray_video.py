"""Video files on a Ray cluster: planned on the driver, decoded in the workers, in segments.

    segs, bad = plan_segments(["line1.avi", "line2.mp4"], every=5, max_frames=None, seconds=60)
    info = embed_videos_to_shards("model.onnx", segs, "shards/", workers=4)

The driver reads only each file's header (frame count, frame rate) and cuts the frames that a
local fit takes (``dn2.runtime.fit_video``: every ``every``-th frame from the first, the first
``max_frames`` of those or those of the first ``seconds`` on the file's clock, at most
``MAX_LEARN_FRAMES`` per video) into segments of ``SEGMENT_FRAMES`` kept frames. Each segment is
one row of a Ray dataset; an actor seeks to its first frame, decodes its frames and returns one
row per frame, so a long video is decoded by several workers at once and no frame ever reaches
the driver, which only sees embeddings (fit) or score rows (``dn2 score --ray``).

Frames are prepared as the watch loop's reader prepares them (``watch.sources.as_bgr``, then
``images.prepare`` with the model's resize rule), so a Ray fit of a video embeds the same crops
as a local fit of it. A video that cannot be opened, or a segment whose frames stop early, is a
row with an error, never a failed job.
"""

from __future__ import annotations

import math
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import Dn2Error
from .ray_embed import EmbedActor, embed_to_shards

SEGMENT_FRAMES = 64  # kept frames per read task: a 1000-frame video is 16 tasks


def _header(path: str) -> Tuple[Optional[int], Optional[float]]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise Dn2Error(f"{path}: expected a video file OpenCV can decode, found one it cannot")
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return (int(count) if count and count > 0 else None), (fps if 0 < fps < 1000 else None)
    finally:
        cap.release()


def frame_limit(
    count: Optional[int],
    fps: Optional[float],
    every: int,
    max_frames: Optional[int],
    seconds: Optional[float],
    cap: Optional[int],
) -> Optional[int]:
    """The first frame number a local fit would not take (None: read to the end)."""
    limits = [] if count is None else [count]
    if max_frames is not None:
        limits.append(int(max_frames) * every)
    if cap is not None:
        limits.append(int(cap) * every)
    if seconds is not None:
        if not fps:
            raise Dn2Error(
                "seconds: expected a video with a frame rate, found none", param="seconds"
            )
        end = max(0, math.ceil(float(seconds) * fps) - 1)  # frame i is kept while i / fps < S
        while end / fps < float(seconds):
            end += 1
        limits.append(end)
    return min(limits) if limits else None


def plan_segments(
    videos: Sequence[str],
    *,
    every: int = 1,
    max_frames: Optional[int] = None,
    seconds: Optional[float] = None,
    cap: Optional[int] = None,
    seg_frames: Optional[int] = None,
) -> Tuple[List[Dict], List[Tuple[str, str]]]:
    """(segments {video, source, start, stop, every, frames}, bad videos (path, message)).

    ``source`` is the video's position in ``videos``; ``frames`` the kept frames planned
    (``stop`` None: to the end of a file whose header has no frame count); ``seg_frames``
    kept frames per segment (default ``SEGMENT_FRAMES``)."""
    if int(every) < 1:
        raise Dn2Error(f"every: expected >= 1, found {every}", param="every")
    every = int(every)
    segs: List[Dict] = []
    bad: List[Tuple[str, str]] = []
    for src, path in enumerate(videos):
        try:
            count, fps = _header(path)
            end = frame_limit(count, fps, every, max_frames, seconds, cap)
        except Dn2Error as exc:
            bad.append((str(path), str(exc)))
            continue
        if end is None:
            segs.append(
                dict(video=str(path), source=src, start=0, stop=None, every=every, frames=0)
            )
            continue
        if end <= 0:
            bad.append((str(path), f"{path}: expected video frames, found none"))
            continue
        step = max(1, int(seg_frames or SEGMENT_FRAMES)) * every
        for start in range(0, end, step):
            stop = min(end, start + step)
            n = len(range(start, stop, every))
            segs.append(
                dict(video=str(path), source=src, start=start, stop=stop, every=every, frames=n)
            )
    return segs, bad


def read_segment(
    path: str, start: int, stop: Optional[int], every: int
) -> Iterator[Tuple[int, np.ndarray]]:
    """(frame number, BGR frame) for every ``every``-th frame in [start, stop) of a file.

    Seeks to ``start`` (OpenCV positions MJPEG and keyframe codecs on the exact frame; the
    position it reports is checked) and decodes forward; raises Dn2Error when the file cannot
    be opened or positioned, or a frame is not a picture. A file that ends before ``stop``
    (a header that over-counts) just ends the segment."""
    import cv2

    from .watch.sources import as_bgr

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise Dn2Error(f"{path}: expected a video file OpenCV can decode, found one it cannot")
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, float(start))
            pos = int(round(cap.get(cv2.CAP_PROP_POS_FRAMES)))
            if pos != start:
                raise Dn2Error(f"{path}: expected to seek to frame {start}, found frame {pos}")
        i = start
        while stop is None or i < stop:
            if (i - start) % every:
                if not cap.grab():
                    return
            else:
                ok, frame = cap.read()
                if not ok:
                    return
                img = as_bgr(frame)
                if img is None:
                    raise Dn2Error(f"{path}: frame {i} is not a picture")
                yield i, img
            i += 1
    finally:
        cap.release()


def segment_rows(batch) -> List[Tuple[str, int, Optional[int], int]]:
    """The segments of a Ray batch (the dataset holds strings; "" stop: to the end)."""
    return [
        (str(v), int(a), int(b) if str(b) else None, int(e))
        for v, a, b, e in zip(batch["path"], batch["start"], batch["stop"], batch["every"])
    ]


def segment_columns(segs: Sequence[Dict]) -> Dict[str, List]:
    return {
        "path": [s["video"] for s in segs],
        "start": [s["start"] for s in segs],
        "stop": ["" if s["stop"] is None else s["stop"] for s in segs],
        "every": [s["every"] for s in segs],
    }


def frame_name(path: str, index: int) -> str:
    """A frame's name in a fit report, as a local fit names it."""
    return f"{path} frame {index}"


class VideoEmbedActor(EmbedActor):
    """An EmbedActor fed video segments: one output row per decoded frame."""

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        from .images import prepare

        t0 = time.perf_counter()
        names: List[str] = []
        errors: List[str] = []
        parts: List[np.ndarray] = []
        bs = max(1, int(self.emb.batch_size))
        for path, start, stop, every in segment_rows(batch):
            crops: List[np.ndarray] = []
            bad: List[Tuple[str, str]] = []  # a frame the model cannot take, or the file's end
            try:
                for i, img in read_segment(path, start, stop, every):
                    try:
                        crops.append(prepare(img, self.emb.rule, name=frame_name(path, i)))
                        names.append(frame_name(path, i))
                        errors.append("")
                    except Dn2Error as exc:
                        bad.append((frame_name(path, i), str(exc)))
            except Dn2Error as exc:
                bad.append((path, str(exc)))
            if not crops and not bad:
                bad.append((path, f"{path}: expected frames from frame {start}, found none"))
            for j in range(0, len(crops), bs):
                parts.append(self.emb.embed_batch(np.stack(crops[j : j + bs])))
            for name, msg in bad:  # after the segment's frames: their rows stay in time order
                names.append(name)
                errors.append(msg)
                parts.append(np.zeros((1, self.emb.dim), np.float32))
        n = len(names)
        busy = np.zeros(n)
        busy[:1] = time.perf_counter() - t0
        return {
            "path": np.asarray(names, dtype=object),
            "ok": np.asarray([not e for e in errors], bool),
            "embedding": np.vstack(parts) if parts else np.zeros((0, self.emb.dim), np.float32),
            "error": np.asarray(errors, dtype=object),
            "actor": np.full(n, os.getpid(), np.int64),
            "busy_s": busy,
        }


def embed_videos_to_shards(model_path, segs: Sequence[Dict], out_dir, **kw) -> Dict:
    """``ray_embed.embed_to_shards`` over video segments: one shard row per frame, named
    ``"PATH frame N"``, in time order per video."""
    return embed_to_shards(
        model_path,
        [s["video"] for s in segs],
        out_dir,
        actor=VideoEmbedActor,
        columns=segment_columns(segs),
        total=sum(s["frames"] for s in segs) or None,
        block_rows=1,
        **kw,
    )


def video_colour(color: str, segs: Sequence[Dict], batch: int, say) -> Dict:
    """The manifest's ``fit.color`` for a fit of videos only: with "auto", decided by the
    first batch of frames of the first video, as a local fit of that video decides it."""
    import itertools

    from . import color as C
    from .fit_video import COLOR_FRAMES
    from .fitparts import color_mode

    if color != "auto" or not segs:
        return color_mode(color, None)
    first = [s for s in segs if s["source"] == segs[0]["source"]]
    stop = None if any(s["stop"] is None for s in first) else max(s["stop"] for s in first)
    try:
        frames = [
            img
            for _, img in itertools.islice(
                read_segment(first[0]["video"], 0, stop, first[0]["every"]), int(batch)
            )
        ]
    except Dn2Error:
        frames = []  # the workers report the file; colour falls back to "no image to look at"
    detected = C.detect(frames[:COLOR_FRAMES])
    say(
        f"colour: the first {detected['sampled']} frames are "
        f"{'monochrome: scoring in gray' if detected['mode'] == 'gray' else 'colour'}"
    )
    return {"option": "auto", "detected": detected, "mode": detected["mode"]}


def frame_rows(videos: Sequence[str], names: Sequence[str], n_images: int) -> Dict:
    """``fit_bundle(frames=...)`` for ``n_images`` image rows followed by the frame rows
    ``names`` ("PATH frame N", in time order per video): which rows are frames, each frame's
    video (windows never straddle two) and the manifest's per-video frame counts."""
    source = {str(v): i for i, v in enumerate(videos)}
    segs = np.asarray([source[n.rsplit(" frame ", 1)[0]] for n in names], np.int64)
    return {
        "temporal": np.concatenate([np.zeros(n_images, bool), np.ones(len(names), bool)]),
        "segments": segs,
        "streams": [
            {"source": str(v), "frames": int((segs == i).sum())}
            for i, v in enumerate(videos)
            if (segs == i).any()
        ],
    }
