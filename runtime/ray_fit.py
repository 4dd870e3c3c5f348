"""``dn2 fit --ray``: embed the normal images on a Ray cluster, then the local fit path.

    fit_bundle_ray("model.onnx", "bundle", ["normal/"], address=None, workers=2, threads=1)

The images are listed on the driver (``find_images``: the same files, order and problems as a
local fit), embedded by an actor pool (``ray_embed.embed_to_shards``: one onnxruntime session
per actor), written as ``.npy`` shards and read back; cleaning, k-means compression, the bank,
calibration and the bundle are then exactly ``fit.fit_bundle`` on those embeddings, so the
bundle has the same format (manifest ``fit.source`` says ``ray``) and, on the same images, the
same scores as a local fit (tests/test_ray.py states the tolerance).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

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
    from .bundle import check_output
    from .fit import color_mode, fit_bundle
    from .fit_video import split_inputs
    from .modelmeta import read_model_meta
    from .paths import regular_file

    model_path = Path(model_path)
    regular_file(model_path, "a dn2 ONNX model file (from dn2-export)")
    check_output(output)  # an unwritable target fails now, not after embedding everything
    read_model_meta(str(model_path))  # not a dn2 model: say so here, before any actor starts
    image_in, streams = split_inputs(expand_inputs(images))  # a missing path: an error, as local
    if streams:
        raise Dn2Error(
            f"fit --ray: expected image files, folders or globs, found "
            f"{streams[0]!r} (videos, cameras and streams are fitted without --ray)"
        )
    files, problems = find_images(image_in)
    if not files:
        raise Dn2Error(
            f"fit --ray: expected normal images in {images}, found none"
            + (f" ({len(problems)} problems, first: {problems[0][1]})" if problems else "")
        )
    colour = color_mode(color, files, progress)  # detected on the driver, as a local fit does
    tmp = None
    if shards_dir is None:
        parent = Path(output).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".dn2-shards-", dir=parent)
        shards_dir = tmp
    try:
        started = connect(address, num_cpus=num_cpus)
        try:
            info = embed_to_shards(
                model_path,
                files,
                shards_dir,
                workers=workers,
                threads=threads,
                gpus=gpus,
                batch=batch,
                providers=providers,
                jpeg_draft=jpeg_draft,
                gray=colour["mode"] == "gray",
                progress=progress,
            )
        finally:
            if started:
                shutdown()
        _say(
            progress,
            f"ray: embedded {len(info['paths'])} images with {info['actors']} "
            f"actors at {info['images_per_s']:.1f} img/s across the cluster; "
            f"{len(info['failed'])} bad files",
        )
        x, names, failed = load_shards(shards_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(x) == 0:
        raise Dn2Error(
            f"fit --ray: expected good normal images, found none of {len(files)} "
            f"readable ({len(failed)} bad files, first: {failed[0][1]})"
        )
    for path, msg in failed:
        shown = msg if str(msg).startswith(str(path)) else f"{path}: {msg}"
        _say(progress, f"  skipped {shown}")
    return fit_bundle(
        model_path,
        output,
        embeddings=x,
        names=names,
        embed_failed=list(problems) + list(failed),
        source="ray",
        batch=batch,
        threads=threads,
        providers=providers,
        jpeg_draft=jpeg_draft,
        color=colour,
        progress=progress,
        **fit_kwargs,
    )
