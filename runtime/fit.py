"""Fit a bundle from normal images or precomputed embeddings (the library side of dn2-fit).

Steps (docs/design.md, data flow 2): embed the good images (bad files are skipped, listed and
counted) -> optional L2 normalisation -> optional cleaning (paper 3.2) -> optional k-means
compression (paper 5.1) -> bank -> threshold from normal data only -> optional group bank
(paper 3.3) -> bundle, written atomically.

Threshold calibration set: *every* good training image, scored without itself: bank members
by leave-one-out (k-fold when the bank holds k-means centres, see scoring.loo_kmeans_scores),
images dropped by cleaning directly against the final bank (they are not in it). Scoring only
the kept images would calibrate on the dense half the cleaning selected and put the threshold
far too low. In the unsupervised setting (anomalies among the training images) the
contamination above the target FPR raises the threshold; give ``--val-normal`` and choose
``--threshold-method val-fpr`` to calibrate on clean images instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import fit_append as FA
from .bank import build_bank, hnsw_params
from .bundle import check_output, write_bundle
from .config import FitConfig
from .dupes import copy_groups, grouped_scores
from .errors import Dn2Error
from .fitparts import (
    Inputs,
    LazyEmbedder,
    as_list,
    check_data,
    color_mode,
    group_section,
    needed_images,
    norm,
    say,
    select_l2norm,
    validation_embeddings,
)
from .manifest import BankRef, Manifest, ModelRef, Threshold
from .manifest_fit import FitRecord, StoredEmbeddings
from .paths import regular_file
from .scoring import clean as clean_embeddings
from .scoring import knn_score, loo_kmeans_scores
from .threshold import calibrate, capped_warning

log = logging.getLogger(__name__)


def _source_name(images, streams, n_frames: int, n: int) -> str:
    if images is None:
        return "embeddings"
    if streams:
        return "streams" if n_frames == n else "images+streams"
    return "images"


def fit_config(config: Optional[FitConfig] = None, **options) -> FitConfig:
    """``config`` (default ``FitConfig()``) with the keyword ``options`` replacing its fields
    (validated; an unknown name is a ConfigError naming it)."""
    cfg = FitConfig() if config is None else config
    if not isinstance(cfg, FitConfig):
        raise Dn2Error(f"config: expected a FitConfig, found {type(cfg).__name__}", param="config")
    return cfg.replace(**options) if options else cfg


def fit_bundle(
    model_path,
    output,
    images: Optional[Inputs] = None,
    embeddings=None,
    names: Optional[Sequence[str]] = None,
    config: Optional[FitConfig] = None,
    *,
    group_dirs: Optional[Inputs] = None,
    val_normal=None,
    val_anomalous=None,
    progress: bool = True,
    embed_failed: Optional[Sequence] = None,
    source: Optional[str] = None,
    temporal: bool = False,
    frames: Optional[dict] = None,
    prior=None,
    before_install=None,
    variants=None,
    **options,
) -> Path:
    """Fit a bundle at ``output`` from normal ``images`` (paths, folders, globs) or
    ``embeddings`` [N, D] (+ ``names``). Returns the bundle path.

    ``config``: a :class:`dn2.runtime.config.FitConfig` (k, clean, kmeans, index, fpr,
    threshold_method, group_size, n_groups, pooling, l2norm, jpeg_draft, color, every, seed,
    batch, threads, providers, ...: defaults and rules there); keyword ``options`` named like
    its fields override it, so ``fit_bundle(m, out, images=..., k=3, fpr=0.05)`` works as
    well. ``val_normal`` / ``val_anomalous``: labelled validation images (or embeddings) for
    the threshold methods and ``l2norm="auto"``; ``group_dirs``: folders of group folders.

    ``l2norm``: True (default) / False, or ``"auto"``: whichever separates ``val_normal`` from
    ``val_anomalous`` better (:func:`select_l2norm`). ``jpeg_draft``: decode large JPEGs at
    reduced scale (``Embedder(jpeg_draft=True)``); recorded so scoring decodes the same way.
    ``color``: "auto" (detect whether the normal images are monochrome), "gray" or "color"; a
    gray bank scores every input converted to gray (``dn2.runtime.color``); recorded in the
    manifest (``score.color``) so every scorer follows it. ``embed_failed`` / ``source`` /
    ``color`` as a :func:`color_mode` dict: with ``embeddings`` embedded elsewhere (e.g. on
    Ray), the files that failed there, (path, message), what the manifest names as the
    source, and the colour mode detected on those images.

    ``images`` may also name video files, camera indices, stream URLs and GStreamer pipelines
    (``dn2.runtime.fit_video``: ``every`` N-th frame, up to ``max_frames`` / ``seconds`` per
    stream, live sources retried for ``connect_timeout`` s); their frames, and ``embeddings``
    given with ``temporal=True`` (consecutive frames, as ``watch --learn`` collects), are
    calibrated by blocked hold-out, and ``group_size`` then pools sliding windows of them;
    ``frames`` (``ray_video.frame_rows``) marks the frame rows of ``embeddings`` and their videos.
    ``augment="camera"``: ``augment_copies`` camera-path variants of every normal image
    (real MJPG / mp4v round trips, sensor noise, scale, light; ``dn2.runtime.augment``) join
    the bank (``augment_into``: or the bank and the calibration, each in its original's
    duplicate group, or the calibration only); ``"auto"`` (the default) is "camera" for the
    still images of a fit into an exact bank, "none" for frames, k-means and embeddings
    (``variants``: their camera variants made elsewhere, e.g. on Ray:
    ``augment.augment_rows``)."""
    cfg = fit_config(config, **options)
    model_path = Path(model_path)
    regular_file(model_path, "a dn2 ONNX model file (from dn2-export)")
    if (images is None) == (embeddings is None):
        raise Dn2Error(
            "fit: expected exactly one of images or embeddings, found "
            + ("both" if images is not None else "neither"),
            param="images",
        )
    check_data(cfg, val_normal, val_anomalous)
    k, clean, kmeans, index, fpr, l2norm = (
        cfg.k,
        cfg.clean,
        cfg.kmeans,
        cfg.index,
        cfg.fpr,
        cfg.l2norm,
    )
    group_size, n_groups, pooling, seed = cfg.group_size, cfg.n_groups, cfg.pooling, cfg.seed
    batch, threads, providers, color = cfg.batch, cfg.threads, cfg.providers, cfg.color
    kmeans_backend, hnsw, jpeg_draft = cfg.kmeans_backend, cfg.hnsw, cfg.jpeg_draft
    threshold_method = cfg.threshold_method
    every, max_frames, seconds, connect_timeout = (
        cfg.every,
        cfg.max_frames,
        cfg.seconds,
        cfg.connect_timeout,
    )
    check_output(output)  # an unwritable target fails now, not after embedding everything
    emb = LazyEmbedder(model_path, providers, threads, batch, progress, bool(jpeg_draft))
    from . import fit_video as FV

    inputs = None if images is None else FV.split_inputs(as_list(images))
    if inputs and inputs[1] or frames is not None:
        FV.check_frame_options(kmeans, clean, group_dirs, pooling)
    if inputs and inputs[1] and not inputs[0] and color == "auto":
        colour = {"option": "auto", "detected": None, "mode": "auto"}  # the frames decide
    else:
        colour = (
            color
            if isinstance(color, dict)
            else color_mode(color, inputs[0] if inputs else None, progress)
        )
    emb.gray = colour["mode"] == "gray"
    failed: List[Tuple[str, str]] = []
    in_order, temporal, segs, streams = bool(temporal), None, None, []
    if images is not None:
        x, names, failed, temporal, segs, streams = FV.embed_inputs(
            emb,
            as_list(images),
            colour,
            every=every,
            max_frames=max_frames,
            seconds=seconds,
            batch=batch,
            say=lambda m: say(progress, m),
            connect_timeout=connect_timeout,
        )
        meta = emb.embedder.meta
        for path, msg in failed:
            shown = msg if str(msg).startswith(str(path)) else f"{path}: {msg}"
            say(progress, f"  skipped {shown}")
    else:
        from .modelmeta import read_model_meta

        meta = read_model_meta(str(model_path))
        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or x.shape[1] != meta.dim:
            raise Dn2Error(
                f"embeddings: expected [N, {meta.dim}] for this model, found shape {x.shape}"
            )
        failed = [(str(p), str(m)) for p, m in (embed_failed or [])]
        names = (
            [str(n) for n in names]
            if names is not None
            else [f"embedding[{i}]" for i in range(len(x))]
        )
        if len(names) != len(x):
            raise Dn2Error(f"names: expected {len(x)} (one per embedding), found {len(names)}")
        temporal = np.full(len(x), in_order) if frames is None else frames["temporal"]
        segs = np.zeros(int(temporal.sum()), np.int64) if frames is None else frames["segments"]
        streams = [] if frames is None else frames["streams"]
    rows, aug_info = FA.normal_rows(
        emb.embedder if images is not None else None,
        FA.new_rows(x, names, None, temporal, segs, None, streams),
        cfg,
        prior,
        len(failed),
        lambda m: say(progress, m),
        variants=variants,
    )
    x, names, hashes, temporal = rows.x, rows.names, rows.hashes, rows.temporal
    segs, origin, streams = rows.segments, rows.origin, rows.streams
    if not temporal.any():
        temporal = None
    need = needed_images(k, clean)
    n_inputs = int((origin < 0).sum())  # images and frames; their camera variants not counted
    if n_inputs < need:
        raise Dn2Error(
            f"fit needs at least {need} good normal images (k={k} neighbours + 1 "
            f"for leave-one-out{f', after cleaning {clean:g}' if clean else ''}), "
            f"found {n_inputs} ({len(failed)} bad files skipped)"
        )
    vn, vn_failed = validation_embeddings(emb, val_normal, "val_normal", progress)
    va, va_failed = validation_embeddings(emb, val_anomalous, "val_anomalous", progress)
    selection = None
    if l2norm == "auto":
        selection = select_l2norm(x, vn, va, k, progress)
        l2norm = selection["chosen"]
    x, vn, va = norm(x, l2norm), norm(vn, l2norm), norm(va, l2norm)

    keep = np.ones(len(x), bool)
    clean_dist = None
    if clean:
        keep, clean_dist = clean_embeddings(x, clean, k, index)
        dropped = [names[i] for i in np.flatnonzero(~keep)]
        say(progress, f"cleaning {clean:g}: dropped {len(dropped)} of {len(x)} images")
        for n_ in dropped:
            say(progress, f"  dropped {n_}")
    # camera variants (origin >= 0) join the bank, the calibration or both (augment_into)
    variant = origin >= 0
    into = cfg.augment_into if variant.any() else "both"
    in_bank = keep & ~variant if into == "calibration" else keep
    scored = ~variant if into == "bank" else np.ones(len(x), bool)
    xk = x[in_bank]
    hnsw = dict(hnsw_params(len(xk) if kmeans is None else kmeans, x.shape[1]), **(hnsw or {}))
    bank = build_bank(xk, index, **hnsw) if kmeans is None else None
    labels, dups = copy_groups(
        x, origin, temporal, hashes, bank if in_bank.all() else None, seed, cfg.near_copy_ratio
    )
    if dups["images_in_groups"]:
        say(
            progress,
            f"duplicates: {dups['images_in_groups']} images in {dups['groups']} "
            f"groups of copies ({dups['exact_copies']} exact, {dups['near_copies']} "
            f"near; largest {dups['largest']}); each is calibrated without its group",
        )
    km_info = None
    if kmeans is not None:
        from .kmeans import kmeans as run_kmeans

        res = run_kmeans(xk, int(kmeans), seed=seed, backend=kmeans_backend)
        km_info = dict(res.info(), folds=int(cfg.kmeans_folds), seed=seed)
        say(
            progress,
            f"k-means: {len(xk)} -> {res.centres.shape[0]} centres "
            f"({res.backend}, {res.seconds:.1f} s)",
        )
        bank = build_bank(res.centres, index, **hnsw)
        loo = loo_kmeans_scores(
            xk, int(kmeans), k, cfg.kmeans_folds, seed, kmeans_backend, groups=labels[keep]
        )
        how = (
            f"{cfg.kmeans_folds}-fold: centres fitted without the scored image's fold "
            f"(copies share a fold)"
        )
        calib = np.concatenate([loo, knn_score(bank, x[~keep], k)]) if (~keep).any() else loo
    elif temporal is not None:
        calib, how = FV.temporal_calibration(
            bank, x[scored], temporal[scored], labels[scored], labels[in_bank], k
        )
    else:
        calib = grouped_scores(bank, x[scored], k, labels[scored], labels[in_bank])
        how = (
            "leave-one-out against the bank without the image itself and its duplicates"
            if dups["images_in_groups"]
            else "leave-one-out against the bank without the image itself"
        )
    if (~keep).any():
        how += "; images dropped by cleaning scored against the final bank"

    threshold = calibrate(
        calib,
        fpr,
        knn_score(bank, vn, k) if vn is not None and len(vn) else None,
        knn_score(bank, va, k) if va is not None and len(va) else None,
        threshold_method,
        calibration=how,
    )
    say(progress, f"threshold ({threshold['method']}, fpr {fpr:g}): {threshold['value']:.6g}")
    if getattr(bank, "engine", "") == "hnswlib" and hnsw.get("engine", "auto") == "auto":
        say(
            progress,
            "two-stage bank: hnswlib walks the graph (pip install 'dn2[kmeans]': faiss walks it faster)",
        )
    warn = capped_warning(threshold)
    if warn:
        log.warning(warn)  # shown even with --quiet

    group, gbank, greport = None, None, {}
    if group_size and temporal is not None:
        group, gbank = FV.window_section(
            x[temporal], segs, group_size, k, fpr, index, bool(l2norm), seed
        )
        say(
            progress,
            f"groups: {group.n_groups} windows of {group_size} consecutive "
            f"frames, threshold {group.threshold.value:.6g}",
        )
    elif group_size or group_dirs:
        group, gbank, greport = group_section(
            xk,
            emb,
            group_size=group_size,
            group_dirs=group_dirs,
            n_groups=n_groups,
            pooling=pooling,
            k=k,
            fpr=fpr,
            index=index,
            l2norm=l2norm,
            seed=seed,
            progress=progress,
        )

    n_frames = 0 if temporal is None else int(temporal.sum())
    manifest = Manifest(
        model=ModelRef.of_meta(meta),
        bank=BankRef(contents="kmeans-centres" if kmeans is not None else "embeddings"),
        score=cfg.score_config(l2norm=bool(l2norm)).replace(color=colour["mode"]),
        threshold=Threshold.of(threshold),
        group=group,
        fit=FitRecord(
            config=cfg,
            images=n_inputs,
            kept=int(in_bank.sum()),
            failed=len(failed),
            dropped=int((~keep).sum()),
            source=source or _source_name(images, streams, n_frames, len(x)),
            color=colour,
            duplicates=dups,
            augment=aug_info,
            kmeans=km_info,
            l2norm_selection=selection,
            embeddings=StoredEmbeddings(**rows.info()),
            extra={
                "cleaned_fraction": float(clean),
                "seed": int(seed),
                "index": index,
                "streams": streams,
                "every": int(every),
                "temporal_frames": n_frames,
            },
        ),
    )
    report = {
        "kept": [names[i] for i in np.flatnonzero(in_bank)],
        "dropped": [
            {"name": names[i], "loo_distance": float(clean_dist[i])} for i in np.flatnonzero(~keep)
        ],
        "failed": [list(f) for f in failed],
        "val_failed": [list(f) for f in vn_failed + va_failed],
        "bank_rows": "kept" if kmeans is None else "kmeans-centres",
        **greport,
    }
    out = write_bundle(
        output,
        model_path,
        manifest,
        bank,
        gbank,
        report,
        extra=rows.files(),
        before_install=before_install,
    )
    say(progress, f"bundle written: {out}")
    return out


fit_bundle.config_type = FitConfig  # its keyword options are FitConfig's fields
