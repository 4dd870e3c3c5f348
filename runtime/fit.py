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
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import groups as G
from .bank import HNSW_DEFAULTS, build_bank
from .bundle import check_output, write_bundle
from .config import FitConfig
from .dupes import find_duplicates, grouped_scores
from .errors import Dn2Error
from .paths import regular_file
from .scoring import DEFAULT_L2NORM, knn_score, l2normalize, loo_kmeans_scores
from .scoring import clean as clean_embeddings
from .threshold import calibrate, capped_warning, conformal_quantile, quantile_table, roc_auc

Inputs = Union[str, Path, Sequence[Union[str, Path]]]


log = logging.getLogger(__name__)


def _say(progress: bool, msg: str) -> None:
    """Progress notes go to the ``dn2`` logger (shown by the CLI; silent in a library call
    unless the caller configures logging)."""
    if progress:
        log.info(msg)


def _as_list(inputs: Inputs) -> List[str]:
    if isinstance(inputs, (str, Path)):
        return [str(inputs)]
    return [str(i) for i in inputs]


class _Embed:
    """Creates the Embedder on first use (fitting from embeddings may never need it)."""

    def __init__(self, model_path, providers, threads, batch, progress, jpeg_draft=False):
        self.args = (model_path, providers, threads, batch, jpeg_draft)
        self.progress = progress
        self.gray = False  # set from the colour mode before the first embedding
        self._emb = None

    @property
    def embedder(self):
        if self._emb is None:
            from .embedder import Embedder

            mp, providers, threads, batch, draft = self.args
            self._emb = Embedder(
                str(mp),
                providers=providers,
                threads=threads,
                batch_size=batch,
                jpeg_draft=draft,
                gray=self.gray,
            )
        self._emb.gray = self.gray
        return self._emb

    def inputs(self, inputs: Inputs) -> Tuple[np.ndarray, List[str], List[Tuple[str, str]]]:
        from .images import find_images

        files, problems = find_images(_as_list(inputs))
        if not files:
            return np.zeros((0, self.embedder.dim), np.float32), [], list(problems)
        res = self.embedder.embed_paths(files, progress=self.progress)
        return (
            np.asarray(res.embeddings, np.float32),
            list(res.paths),
            list(problems) + list(res.errors),
        )


def color_mode(color: str, images: Optional[Inputs], progress: bool = False) -> Dict:
    """The manifest's ``fit.color``: the option, what the normal images look like, the mode."""
    from . import color as C
    from .images import find_images

    C.check_option(color)
    detected = None
    if images is not None and color == "auto":
        files, _ = find_images(_as_list(images))
        detected = C.detect_files(files)
    mode = C.resolve(color, detected or {})
    if detected is not None:
        _say(
            progress,
            f"colour: {detected['sampled']} sampled normal images, "
            f"{detected.get('gray_share', 0):.0%} monochrome -> scoring in {mode}"
            + (" (every input converted to gray first)" if mode == "gray" else ""),
        )
    return {"option": color, "detected": detected, "mode": mode}


def _source_name(images, streams, n_frames: int, n: int) -> str:
    if images is None:
        return "embeddings"
    if streams:
        return "streams" if n_frames == n else "images+streams"
    return "images"


def _needed(k: int, clean: float) -> int:
    n = k + 1
    while n - int(np.floor(clean * n)) < k + 1:
        n += 1
    return n


def _check_data(cfg: FitConfig, val_normal, val_anomalous) -> None:
    """Settings that need data the config does not hold; before minutes of embedding."""
    m = cfg.threshold_method
    if m != "fpr" and val_normal is None:
        raise Dn2Error(
            f"threshold_method {m}: expected val_normal images, found none",
            params=("val_normal", "threshold_method"),
        )
    if m in ("youden", "f1") and val_anomalous is None:
        raise Dn2Error(
            f"threshold_method {m}: expected val_anomalous images, found none",
            params=("val_anomalous", "threshold_method"),
        )
    if cfg.l2norm == "auto" and (val_normal is None or val_anomalous is None):
        raise Dn2Error(
            "l2norm 'auto': expected val_normal and val_anomalous images to compare "
            "on, found "
            + ("neither" if val_normal is None and val_anomalous is None else "only one of them"),
            params=("val_normal", "val_anomalous"),
        )


def fit_config(config: Optional[FitConfig] = None, **options) -> FitConfig:
    """``config`` (default ``FitConfig()``) with the keyword ``options`` replacing its fields
    (validated; an unknown name is a ConfigError naming it)."""
    cfg = FitConfig() if config is None else config
    if not isinstance(cfg, FitConfig):
        raise Dn2Error(f"config: expected a FitConfig, found {type(cfg).__name__}", param="config")
    return cfg.replace(**options) if options else cfg


def _validation(emb: _Embed, val, what: str, progress: bool):
    """Embeddings (not yet normalised) of validation images or arrays, and the bad files."""
    if val is None:
        return None, []
    if isinstance(val, np.ndarray):
        x, failed = np.asarray(val, np.float32), []
    else:
        x, _, failed = emb.inputs(val)
        _say(progress, f"{what}: {len(x)} images embedded, {len(failed)} bad files skipped")
    return x, failed


def _norm(x, l2norm: bool):
    return None if x is None else (l2normalize(x) if l2norm else np.ascontiguousarray(x))


def select_l2norm(x, vn, va, k: int, progress: bool = False) -> Dict:
    """Pick L2 normalisation on or off by validation ROC-AUC (normal vs anomalous, each scored
    against a bank of all of ``x``); a tie keeps the default. Returns the choice and both AUCs."""
    if vn is None or va is None or not len(vn) or not len(va):
        raise Dn2Error(
            "l2norm 'auto': expected readable val_normal and val_anomalous "
            f"images, found {0 if vn is None else len(vn)} normal and "
            f"{0 if va is None else len(va)} anomalous",
            params=("val_normal", "val_anomalous"),
        )
    aucs = {}
    for on in (False, True):
        bank = build_bank(_norm(x, on), "auto")
        aucs[on] = roc_auc(knn_score(bank, _norm(vn, on), k), knn_score(bank, _norm(va, on), k))
    chosen = (
        DEFAULT_L2NORM if aucs[DEFAULT_L2NORM] >= aucs[not DEFAULT_L2NORM] else not DEFAULT_L2NORM
    )
    _say(
        progress,
        f"--l2norm-select: validation ROC-AUC {aucs[True]:.4f} L2-normalised, "
        f"{aucs[False]:.4f} plain; using {'L2-normalised' if chosen else 'plain'}",
    )
    return {
        "chosen": bool(chosen),
        "val_auroc_l2norm": round(aucs[True], 6),
        "val_auroc_plain": round(aucs[False], 6),
        "val_normal": int(len(vn)),
        "val_anomalous": int(len(va)),
    }


def _group_section(
    x: np.ndarray,
    emb: _Embed,
    *,
    group_size,
    group_dirs,
    n_groups,
    pooling,
    k,
    fpr,
    index,
    l2norm,
    seed,
    progress,
):
    """(group manifest section, group bank, report) for the pooled normal groups."""
    failed: List[Tuple[str, str]] = []
    if group_dirs:
        members, feats, gnames = [], [], []
        for top in _as_list(group_dirs):
            subs = (
                sorted(p for p in Path(top).iterdir() if p.is_dir()) if Path(top).is_dir() else []
            )
            if not subs:
                raise Dn2Error(
                    f"group_dirs {top}: expected a folder of group folders, found no sub-folders",
                    param="group_dirs",
                )
            for sub in subs:
                gx, _, bad = emb.inputs([str(sub)])
                failed += bad
                if len(gx) == 0:
                    failed.append((str(sub), "group folder without a readable image (skipped)"))
                    continue
                members.append(np.arange(len(feats), len(feats) + len(gx)))
                feats.extend(l2normalize(gx) if l2norm else gx)
                gnames.append(str(sub))
        if len(members) < 2:
            raise Dn2Error(
                f"group_dirs: expected at least 2 usable group folders, found {len(members)}",
                param="group_dirs",
            )
        gx_all = np.asarray(feats, np.float32)
        source, size = "dirs", None
    else:
        members = G.sample_groups(len(x), group_size, n_groups, seed)
        gx_all, gnames, source, size = x, None, "sampled", int(group_size)
    pooled = G.pool_groups(gx_all, members, pooling)
    gk = min(k, len(pooled) - 1)
    loo, n_nan = G.group_loo_scores(pooled, members, gk)
    good = G.check_calibration(loo, gk)
    traces = G.cov_traces(gx_all, members)
    gbank = build_bank(pooled, index)
    th = conformal_quantile(good, fpr)
    section = {
        "size": size,
        "pooling": pooling,
        "source": source,
        "n_groups": len(members),
        "k": gk,
        "seed": seed,
        "l2norm_per_image": bool(l2norm),
        "sizes": [int(min(map(len, members))), int(max(map(len, members)))],
        "threshold": {
            "value": th["value"],
            "method": "fpr",
            "fpr": fpr,
            "quantiles": quantile_table(good),
            "conformal": th,
            "calibration": "leave-one-out against groups sharing no image",
            "n_calibration": int(good.size),
            "no_disjoint_neighbours": n_nan,
        },
        "cov_trace_threshold": {
            "value": conformal_quantile(traces, fpr)["value"],
            "method": "fpr",
            "fpr": fpr,
            "quantiles": quantile_table(traces),
        },
    }
    _say(progress, f"groups: {len(members)} normal groups ({source}), threshold {th['value']:.6g}")
    return section, gbank, {"group_folders": gnames, "group_failed": failed}


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
    calibrated by blocked hold-out, and ``group_size`` then pools sliding windows of them.
    ``augment="camera"``: ``augment_copies`` camera-path variants of every normal image
    (real MJPG / mp4v round trips, sensor noise, scale, light; ``dn2.runtime.augment``) join
    the bank and the calibration, each in its original's duplicate group."""
    cfg = fit_config(config, **options)
    model_path = Path(model_path)
    regular_file(model_path, "a dn2 ONNX model file (from dn2-export)")
    if (images is None) == (embeddings is None):
        raise Dn2Error(
            "fit: expected exactly one of images or embeddings, found "
            + ("both" if images is not None else "neither"),
            param="images",
        )
    _check_data(cfg, val_normal, val_anomalous)
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
    emb = _Embed(model_path, providers, threads, batch, progress, bool(jpeg_draft))
    from . import fit_video as FV

    inputs = None if images is None else FV.split_inputs(_as_list(images))
    if inputs and inputs[1] and (kmeans is not None or clean or group_dirs or pooling != "mean"):
        raise Dn2Error(
            "video / stream inputs: expected no --kmeans, --clean, --group-dirs or "
            "--pooling max (frames are calibrated in time blocks), found them"
        )
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
            _as_list(images),
            colour,
            every=every,
            max_frames=max_frames,
            seconds=seconds,
            batch=batch,
            say=lambda m: _say(progress, m),
            connect_timeout=connect_timeout,
        )
        meta = emb.embedder.meta
        for path, msg in failed:
            shown = msg if str(msg).startswith(str(path)) else f"{path}: {msg}"
            _say(progress, f"  skipped {shown}")
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
        temporal = np.full(len(x), in_order)
        segs = np.zeros(int(temporal.sum()), np.int64)
    if not temporal.any():
        temporal = None
    from .augment import check_option

    check_option(cfg.augment)
    origin, aug_info = None, None
    if cfg.augment == "camera" and images is not None:
        from .augment import SETTINGS, embed_variants

        real = [i for i in range(len(x)) if temporal is None or not temporal[i]]
        xa, orig = embed_variants(emb.embedder, [names[i] for i in real], cfg.augment_copies, seed)
        origin = np.concatenate([np.full(len(x), -1), np.asarray(real)[orig]])
        names = list(names) + [f"{names[real[o]]} (camera variant)" for o in orig]
        x = np.vstack([x, xa])
        if temporal is not None:
            temporal = np.concatenate([temporal, np.zeros(len(xa), bool)])
        aug_info = dict(
            SETTINGS,
            mode="camera",
            copies=int(cfg.augment_copies),
            seed=int(seed),
            variants=int(len(xa)),
        )
        _say(
            progress,
            f"augment camera: {len(xa)} variants (MJPG / mp4v round trips, noise, "
            f"scale, light) join the bank and the calibration",
        )
    need = _needed(k, clean)
    if len(x) < need:
        raise Dn2Error(
            f"fit needs at least {need} good normal images (k={k} neighbours + 1 "
            f"for leave-one-out{f', after cleaning {clean:g}' if clean else ''}), "
            f"found {len(x)} ({len(failed)} bad files skipped)"
        )
    vn, vn_failed = _validation(emb, val_normal, "val_normal", progress)
    va, va_failed = _validation(emb, val_anomalous, "val_anomalous", progress)
    selection = None
    if l2norm == "auto":
        selection = select_l2norm(x, vn, va, k, progress)
        l2norm = selection["chosen"]
    x, vn, va = _norm(x, l2norm), _norm(vn, l2norm), _norm(va, l2norm)

    keep = np.ones(len(x), bool)
    clean_dist = None
    if clean:
        keep, clean_dist = clean_embeddings(x, clean, k, index)
        dropped = [names[i] for i in np.flatnonzero(~keep)]
        _say(progress, f"cleaning {clean:g}: dropped {len(dropped)} of {len(x)} images")
        for n_ in dropped:
            _say(progress, f"  dropped {n_}")
    xk = x[keep]
    hnsw = dict(HNSW_DEFAULTS, **(hnsw or {}))
    bank = build_bank(xk, index, **hnsw) if kmeans is None else None
    if temporal is None:
        labels, dups = find_duplicates(
            x, names if images is not None else None, seed=seed, bank=bank if keep.all() else None
        )
    else:  # frames are calibrated in time blocks; copies matter among the images only
        labels, dups = np.arange(len(x)), {"images_in_groups": 0, "frames": "time blocks"}
        if (~temporal).sum() > 1:
            sub, dups = find_duplicates(
                x[~temporal], [n_ for n_, t in zip(names, temporal) if not t], seed=seed
            )
            labels[np.flatnonzero(~temporal)] = np.flatnonzero(~temporal)[sub]
    if origin is not None:  # a variant is calibrated without its original, and vice versa
        var = origin >= 0
        labels[var] = labels[origin[var]]
    if dups["images_in_groups"]:
        _say(
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
        _say(
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
        calib, how = FV.temporal_calibration(bank, x, temporal, labels, labels[keep], k)
    else:
        calib = grouped_scores(bank, x, k, labels, labels[keep])
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
    _say(progress, f"threshold ({threshold['method']}, fpr {fpr:g}): {threshold['value']:.6g}")
    warn = capped_warning(threshold)
    if warn:
        log.warning(warn)  # shown even with --quiet

    group, gbank, greport = None, None, {}
    if group_size and temporal is not None:
        group, gbank = FV.window_section(
            x[temporal], segs, group_size, k, fpr, index, bool(l2norm), seed
        )
        _say(
            progress,
            f"groups: {group['n_groups']} windows of {group_size} consecutive "
            f"frames, threshold {group['threshold']['value']:.6g}",
        )
    elif group_size or group_dirs:
        group, gbank, greport = _group_section(
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
    manifest = {
        "model": {
            "arch": meta.arch,
            "weights": meta.weights,
            "input": meta.input_size,
            "dim": meta.dim,
            "precision": meta.precision,
        },
        "bank": {"contents": "kmeans-centres" if kmeans is not None else "embeddings"},
        "fit": {
            "config": cfg.to_dict(),
            "images": int(len(x)),
            "kept": int(keep.sum()),
            "failed": len(failed),
            "dropped": int((~keep).sum()),
            "cleaned_fraction": float(clean),
            "kmeans": km_info,
            "seed": int(seed),
            "index": index,
            "source": source or _source_name(images, streams, n_frames, len(x)),
            "l2norm_selection": selection,
            "color": colour,
            "duplicates": dups,
            "streams": streams,
            "every": int(every),
            "temporal_frames": n_frames,
            "augment": aug_info,
        },
        "score": {
            "k": k,
            "reduction": "mean",
            "l2norm": bool(l2norm),
            "jpeg_draft": bool(jpeg_draft),
            "color": colour["mode"],
        },
        "threshold": threshold,
        "group": group,
    }
    report = {
        "kept": [names[i] for i in np.flatnonzero(keep)],
        "dropped": [
            {"name": names[i], "loo_distance": float(clean_dist[i])} for i in np.flatnonzero(~keep)
        ],
        "failed": [list(f) for f in failed],
        "val_failed": [list(f) for f in vn_failed + va_failed],
        "bank_rows": "kept" if kmeans is None else "kmeans-centres",
        **greport,
    }
    out = write_bundle(output, model_path, manifest, bank, gbank, report)
    _say(progress, f"bundle written: {out}")
    return out


fit_bundle.config_type = FitConfig  # its keyword options are FitConfig's fields
