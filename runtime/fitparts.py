"""The parts of a fit that are not its main line (:func:`dn2.runtime.fit.fit_bundle`).

The lazily created embedder, the colour mode, validation embeddings, the L2-normalisation choice
(``l2norm='auto'``) and the group bank section (paper 3.3) with its calibration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import groups as G
from .bank import build_bank
from .config import FitConfig
from .errors import Dn2Error
from .manifest import GroupCalib, Threshold
from .scoring import DEFAULT_L2NORM, knn_score, l2normalize
from .threshold import conformal_quantile, quantile_table, roc_auc

Inputs = Union[str, Path, Sequence[Union[str, Path]]]

log = logging.getLogger("dn2.runtime.fit")


def say(progress: bool, msg: str) -> None:
    """Progress notes go to the ``dn2`` logger (shown by the CLI; silent in a library call
    unless the caller configures logging)."""
    if progress:
        log.info(msg)


def as_list(inputs: Inputs) -> List[str]:
    if isinstance(inputs, (str, Path)):
        return [str(inputs)]
    return [str(i) for i in inputs]


class LazyEmbedder:
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

        files, problems = find_images(as_list(inputs))
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
        files, _ = find_images(as_list(images))
        detected = C.detect_files(files)
    mode = C.resolve(color, detected or {})
    if detected is not None:
        say(
            progress,
            f"colour: {detected['sampled']} sampled normal images, "
            f"{detected.get('gray_share', 0):.0%} monochrome -> scoring in {mode}"
            + (" (every input converted to gray first)" if mode == "gray" else ""),
        )
    return {"option": color, "detected": detected, "mode": mode}


def validation_embeddings(emb: LazyEmbedder, val, what: str, progress: bool):
    """Embeddings (not yet normalised) of validation images or arrays, and the bad files."""
    if val is None:
        return None, []
    if isinstance(val, np.ndarray):
        x, failed = np.asarray(val, np.float32), []
    else:
        x, _, failed = emb.inputs(val)
        say(progress, f"{what}: {len(x)} images embedded, {len(failed)} bad files skipped")
    return x, failed


def norm(x, l2norm: bool):
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
        bank = build_bank(norm(x, on), "auto")
        aucs[on] = roc_auc(knn_score(bank, norm(vn, on), k), knn_score(bank, norm(va, on), k))
    chosen = (
        DEFAULT_L2NORM if aucs[DEFAULT_L2NORM] >= aucs[not DEFAULT_L2NORM] else not DEFAULT_L2NORM
    )
    say(
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


def group_section(
    x: np.ndarray,
    emb: LazyEmbedder,
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
        for top in as_list(group_dirs):
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
    section = GroupCalib(
        pooling=pooling,
        k=gk,
        size=size,
        sizes=(int(min(map(len, members))), int(max(map(len, members)))),
        n_groups=len(members),
        source=source,
        threshold=Threshold.of(
            {
                "value": th["value"],
                "method": "fpr",
                "fpr": fpr,
                "quantiles": quantile_table(good),
                "conformal": th,
                "calibration": "leave-one-out against groups sharing no image",
                "n_calibration": int(good.size),
                "no_disjoint_neighbours": n_nan,
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
        extra={"seed": seed, "l2norm_per_image": bool(l2norm)},
    )
    say(progress, f"groups: {len(members)} normal groups ({source}), threshold {th['value']:.6g}")
    return section, gbank, {"group_folders": gnames, "group_failed": failed}


def needed_images(k: int, clean: float) -> int:
    n = k + 1
    while n - int(np.floor(clean * n)) < k + 1:
        n += 1
    return n


def check_data(cfg: FitConfig, val_normal, val_anomalous) -> None:
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
