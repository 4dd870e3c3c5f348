"""``dn2 fit --ray``: embed the normal images and video frames on a Ray cluster, then the
local fit path.

    fit_bundle_ray("model.onnx", "bundle", ["normal/", "line.avi"], address=None, workers=2)

The images are listed on the driver (``find_images``: the same files, order and problems as a
local fit), embedded by an actor pool (``ray_embed.embed_to_shards``: one onnxruntime session
per actor), written as ``.npy`` shards and read back. Video files are planned on the driver
from their headers and decoded in segments by the workers (``ray_video``: the frames a local
fit takes with ``every`` / ``max_frames`` / ``seconds``), their embeddings written as shards
in ``SHARDS/frames``. Cleaning, k-means compression, the bank, calibration (frames: the local
video fit's blocked hold-out) and the bundle are then exactly ``fit.fit_bundle`` on those
embeddings, so the bundle has the same format (manifest ``fit.source`` says ``ray``) and, on
the same inputs, the same scores as a local fit (tests/test_ray.py states the tolerance).
Cameras and stream URLs are refused: the workers cannot share one camera.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import Dn2Error
from .images import find_images
from .ray_embed import connect, embed_to_shards, load_shards, shutdown
from .ray_inputs import expand_inputs


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def fit_bundle_ray(
    model_path,
    output,
    images,
    *,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    gpus: float = 0.0,
    shards_dir=None,
    num_cpus: Optional[int] = None,
    batch: int = 8,
    threads: Optional[int] = 1,
    providers="auto",
    jpeg_draft: bool = False,
    color="auto",
    progress: bool = True,
    **fit_kwargs,
) -> Path:
    """Fit like ``fit_bundle(model_path, output, images=images, **fit_kwargs)`` with the
    embedding done on Ray. ``address``: None starts a local cluster (``num_cpus`` CPUs),
    "auto" joins the running one, "host:port" / "ray://..." a given one. ``workers``: actors
    (default: cluster CPUs / ``threads``); ``gpus``: GPUs per actor (0: CPU actors).
    ``shards_dir``: keep the embedding shards there (default: a temporary folder next to
    ``output``, removed after the fit)."""
    import dataclasses

    from . import fit_video as FV
    from . import ray_video as RV
    from .bundle import check_output
    from .config import FitConfig
    from .fit import color_mode, fit_bundle, fit_config
    from .modelmeta import read_model_meta
    from .paths import regular_file
    from .watch.learn import MAX_LEARN_FRAMES

    model_path = Path(model_path)
    regular_file(model_path, "a dn2 ONNX model file (from dn2-export)")
    check_output(output)  # an unwritable target fails now, not after embedding everything
    read_model_meta(str(model_path))  # not a dn2 model: say so here, before any actor starts
    fields = {f.name for f in dataclasses.fields(FitConfig) if f.init}
    cfg = fit_config(
        fit_kwargs.get("config"), **{k: v for k, v in fit_kwargs.items() if k in fields}
    )
    if cfg.augment == "camera":
        raise Dn2Error(
            "fit --ray: --augment camera is not available (the workers embed the files as "
            "they are); expected --augment auto or none, or the fit without --ray",
            param="augment",
        )
    image_in, videos = FV.split_inputs(expand_inputs(images))  # a missing path: an error
    live = [v for v in videos if not os.path.isfile(v)]
    if live:
        raise Dn2Error(
            f"fit --ray: expected image or video files, folders or globs, found "
            f"{live[0]!r} (cameras and streams are fitted without --ray: the workers "
            "cannot share one camera)"
        )
    if videos:
        FV.check_stream_args(videos, cfg.every, cfg.max_frames, cfg.seconds)
        FV.check_frame_options(cfg.kmeans, cfg.clean, fit_kwargs.get("group_dirs"), cfg.pooling)
    files, problems = find_images(image_in) if image_in else ([], [])
    segs, bad_videos = RV.plan_segments(
        videos,
        every=cfg.every,
        max_frames=cfg.max_frames,
        seconds=cfg.seconds,
        cap=MAX_LEARN_FRAMES,
    )
    if not files and not segs:
        bad = list(problems) + bad_videos
        raise Dn2Error(
            f"fit --ray: expected normal images or video frames in {images}, found none"
            + (f" ({len(bad)} problems, first: {bad[0][1]})" if bad else "")
        )
    # detected on the driver, as a local fit does: from the images, else the first frames
    colour = (
        color_mode(color, files, progress)
        if files
        else RV.video_colour(color, segs, batch, lambda m: _say(progress, m))
    )
    tmp = None
    if shards_dir is None:
        parent = Path(output).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".dn2-shards-", dir=parent)
        shards_dir = tmp
    pool = dict(
        workers=workers,
        threads=threads,
        gpus=gpus,
        batch=batch,
        providers=providers,
        jpeg_draft=jpeg_draft,
        gray=colour["mode"] == "gray",
        progress=progress,
    )
    try:
        started = connect(address, num_cpus=num_cpus)
        try:
            if files:
                info = embed_to_shards(model_path, files, shards_dir, **pool)
                _report(progress, info, "images")
            if segs:
                info = RV.embed_videos_to_shards(
                    model_path, segs, Path(shards_dir) / "frames", **pool
                )
                _report(progress, info, "video frames")
        finally:
            if started:
                shutdown()
        x, names, failed = load_shards(shards_dir) if files else _empty(model_path)
        xv, vnames, vfailed = (
            load_shards(Path(shards_dir) / "frames") if segs else _empty(model_path)
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    frames = RV.frame_rows(videos, vnames, len(x)) if segs else None
    x = np.vstack([x, xv])
    names = list(names) + list(vnames)
    failed = list(failed) + list(vfailed) + bad_videos
    if len(x) == 0:
        raise Dn2Error(
            f"fit --ray: expected good normal images or frames, found none of "
            f"{len(files)} images and {len(videos)} videos ({len(failed)} bad, first: "
            f"{failed[0][1] if failed else '-'})"
        )
    for path, msg in failed:
        shown = msg if str(msg).startswith(str(path)) else f"{path}: {msg}"
        _say(progress, f"  skipped {shown}")
    return fit_bundle(
        model_path,
        output,
        embeddings=x,
        names=names,
        embed_failed=list(problems) + failed,
        source="ray",
        frames=frames,
        batch=batch,
        threads=threads,
        providers=providers,
        jpeg_draft=jpeg_draft,
        color=colour,
        progress=progress,
        **fit_kwargs,
    )


def _report(progress: bool, info, what: str) -> None:
    _say(
        progress,
        f"ray: embedded {len(info['paths'])} {what} with {info['actors']} actors at "
        f"{info['images_per_s']:.1f} {what}/s across the cluster; "
        f"{len(info['failed'])} bad",
    )


def _empty(model_path):
    from .modelmeta import read_model_meta

    return np.zeros((0, read_model_meta(str(model_path)).dim), np.float32), [], []
