"""On-device learning (``--learn``): fit a bundle from the camera's own first frames.

The first frames (a number of seconds on the frames' clock, or a number of frames) are taken as
normal, embedded, and handed to :func:`dn2.runtime.fit.fit_bundle` as precomputed embeddings;
the watch then goes on with the same stream and the new bundle.

Why the threshold is calibrated differently here: neighbouring video frames are near copies of
each other, so the usual leave-one-out scores (each frame against all the others) are tiny —
every frame's nearest neighbour is the frame next to it — and a threshold taken from them
would fire on ordinary drift. Instead the frames are cut into contiguous time blocks and each
block is scored against a bank of the other blocks only ("blocked" hold-out), which is what the
future stream looks like to the bank. The threshold is the conformal (1 - fpr) quantile of
those scores (:func:`dn2.runtime.threshold.conformal_quantile`, as dn2-fit uses). It errs on the
side of fewer alarms: the watch then scores against a bank of all the learned frames.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import numpy as np

from ..errors import Dn2Error
from ..modelmeta import ResizeRule, read_model_meta
from ..paths import found

MIN_LEARN_FRAMES = 20
MAX_LEARN_FRAMES = 20_000  # ~100 MB of 1280-d float32 embeddings: the memory cap
BLOCKS = 5


def parse_learn(text: str) -> Tuple[str, float]:
    """'30' / '30s' / '2.5s' -> ('seconds', 30.0); '300f' / '300frames' -> ('frames', 300)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds|f|frames)?\s*", str(text))
    if not m:
        raise Dn2Error(
            f"learn expects seconds (30, 30s) or frames (300f), found {text!r}", param="learn"
        )
    value, unit = float(m.group(1)), (m.group(2) or "s")
    if unit.startswith("f"):
        if value != int(value) or value < MIN_LEARN_FRAMES:
            raise Dn2Error(
                f"learn {text}: needs a whole number of at least {MIN_LEARN_FRAMES} frames",
                param="learn",
            )
        return "frames", int(value)
    if value <= 0:
        raise Dn2Error(f"learn {text}: needs a positive number of seconds", param="learn")
    return "seconds", value


def model_path(bundle_or_model: Union[str, Path]) -> Path:
    """The .onnx model to learn with: the file itself, or a bundle folder's model."""
    p = Path(bundle_or_model)
    if p.is_dir():
        for name in ("model.onnx",):
            if (p / name).is_file():
                return p / name
        models = sorted(p.glob("*.onnx"))
        if len(models) == 1:
            return models[0]
        raise Dn2Error(
            f"learn: {p} is a folder without one model.onnx; expected a dn2 "
            "model (.onnx) or a bundle folder",
            param="learn",
        )
    if not p.is_file():
        raise Dn2Error(
            f"learn: model {p}: expected a dn2 model (.onnx from dn2-export) or "
            f"a bundle folder, found {found(p)}",
            param="learn",
        )
    return p


def model_rule(bundle_or_model: Union[str, Path]) -> ResizeRule:
    return read_model_meta(str(model_path(bundle_or_model))).resize


def pool_windows(emb: np.ndarray, size: int, hop: int = 1) -> np.ndarray:
    """Mean of every ``size`` consecutive embeddings, every ``hop`` frames: [W, D]."""
    if len(emb) < size:
        return np.empty((0, emb.shape[1]), np.float32)
    c = np.cumsum(np.vstack([np.zeros((1, emb.shape[1])), emb.astype(np.float64)]), axis=0)
    starts = np.arange(0, len(emb) - size + 1, hop)
    return ((c[starts + size] - c[starts]) / size).astype(np.float32)


def blocked_scores(
    emb: np.ndarray, k: int, blocks: int = BLOCKS, group: Optional[int] = None
) -> np.ndarray:
    """Each contiguous time block scored against a bank built from the other blocks only.

    Frame mode: the frames of block b against the frames of the other blocks. Group mode:
    the pooled ``group``-frame windows of block b against the windows of the other blocks
    (windows never straddle two blocks).
    """
    from ..bank import build_bank
    from ..scoring import knn_score

    parts = np.array_split(np.arange(len(emb)), blocks)
    items = [pool_windows(emb[ix], group) if group else emb[ix] for ix in parts]
    out = []
    for b in range(blocks):
        bank = np.vstack([items[j] for j in range(blocks) if j != b])
        if len(items[b]) and len(bank) >= k:
            out.append(knn_score(build_bank(bank, index="exact"), items[b], k=k))
    if not out:
        raise Dn2Error(
            f"learn: {len(emb)} frames are too few to calibrate a threshold"
            f"{f' for groups of {group}' if group else ''}; learn for longer",
            param="learn",
        )
    return np.concatenate(out)


def collect_frames(
    queue,
    spec: Tuple[str, float],
    embed: Callable,
    batch: int,
    stop,
    log,
    on_first: Optional[Callable] = None,
    what: str = "--learn",
) -> Tuple[np.ndarray, list]:
    """Embeddings of the learning frames, and the frames of the last batch left over;
    ``on_first(frames)`` sees the first full batch (or all frames, if fewer) before it is
    embedded."""
    kind, amount = spec
    chunks, n, first_ts, last_note, rest = [], 0, None, time.monotonic(), []
    first: list = []
    while on_first is not None and len(first) < batch and not stop.is_set():
        more = queue.get_batch(batch - len(first), timeout=0.1)
        if more is None:
            break
        first += more
    while not stop.is_set():
        frames, first = (first, []) if first else (queue.get_batch(batch, timeout=0.1), [])
        if frames is None:
            break
        if not frames:
            continue
        if first_ts is None:
            first_ts = frames[0].timestamp
            if on_first is not None:
                on_first(frames)
        if kind == "seconds":
            cut = sum(1 for f in frames if f.timestamp - first_ts < amount)
        else:
            cut = max(0, int(amount) - n)
        frames, rest = frames[:cut], frames[cut:]
        if frames:
            chunks.append(embed(np.stack([f.prepared for f in frames])))
            n += len(frames)
        if time.monotonic() - last_note > 5.0:
            log(f"{'learning' if what == '--learn' else what}: {n} frames so far")
            last_note = time.monotonic()
        if rest or (kind == "frames" and n >= amount) or n >= MAX_LEARN_FRAMES:
            break
    if stop.is_set():
        raise Dn2Error("stopped while learning; no bundle was fitted")
    if n < MIN_LEARN_FRAMES:
        raise Dn2Error(
            f"{what}: the source gave {n} frames before it ended; at least "
            f"{MIN_LEARN_FRAMES} are needed to fit a bundle"
        )
    return np.vstack(chunks), rest


def learn_from_queue(
    bundle_or_model,
    queue,
    learn: str,
    *,
    output: Union[str, Path],
    group: Optional[int] = None,
    batch: int = 8,
    providers="auto",
    threads=None,
    stop,
    log=lambda m: None,
    k: int = 2,
    fpr: float = 0.01,
    color: str = "auto",
):
    """Embed the first frames from ``queue``, fit a bundle into ``output``, load it.

    Returns (detector, threshold, leftover frames, None): the threshold is for the mode
    being watched (frame or group), calibrated on blocked hold-out scores of the learned
    frames and stored as the bundle's threshold (group mode: the bundle's group bank holds the
    stream's windows of ``group`` consecutive frames, ``dn2.runtime.fit_video``); the leftover
    frames came after the learning span in the last batch and are to be watched first.
    ``color``: "auto" decides from the first batch of frames whether the scene is monochrome
    (then every frame is scored as gray, ``dn2.runtime.color``); "gray" / "color" force it.
    """
    from .. import color as C
    from ..bundle import load_bundle
    from ..detector import Detector
    from ..embedder import Embedder
    from ..fit import fit_bundle

    spec = parse_learn(learn)
    model = model_path(bundle_or_model)
    embedder = Embedder(str(model), providers=providers, threads=threads, batch_size=batch)
    log(f"learning from the first {spec[1]:g} {spec[0]} of the stream (taken as normal)")
    t0 = time.monotonic()
    C.check_option(color)
    mode = {"mode": color}

    def decide_color(frames) -> None:
        if color == "auto":
            mode.update(C.detect([f.image for f in frames]))
        embedder.gray = mode["mode"] == "gray"
        if embedder.gray:
            log("learning: the frames are monochrome; every frame is scored as gray")

    emb, rest = collect_frames(queue, spec, embedder.embed_batch, batch, stop, log, decide_color)
    if group and len(emb) < BLOCKS * (group + 1):
        raise Dn2Error(
            f"learn with group {group}: {len(emb)} frames are too few; learn "
            f"at least {BLOCKS * (group + 1)} frames",
            params=("learn", "group"),
        )
    names = [f"learned frame {i}" for i in range(len(emb))]
    # the bundle's threshold (and group bank) are the blocked hold-out ones watched with
    out = fit_bundle(
        str(model),
        str(output),
        embeddings=emb,
        names=names,
        k=k,
        fpr=fpr,
        progress=False,
        color=mode["mode"],
        temporal=True,
        group_size=group,
    )
    detector = Detector(load_bundle(str(out)), embedder)  # one onnxruntime session, not two
    thr = detector.group_threshold if group else detector.threshold
    log(
        f"learned a bundle from {len(emb)} frames in {time.monotonic() - t0:.1f} s -> {out}; "
        f"{'group ' if group else ''}threshold {thr:.4g} (blocked hold-out, FPR {fpr:g})"
    )
    return detector, thr, rest, None
