"""Fit a bundle with a view and/or the patch signal (``dn2-fit --mode patch|both`` or
``--view full|tiles=RxC`` / ``--roi``).

One pass over the normal images through ``ViewEmbedder`` gives, per image, the pooled
embedding of each model input (``T`` inputs: 1 for crop/full, R x C for tiles) and, with the
patch signal, its patch features. Memory stays bounded:

* patch features go straight into per-fold ``StreamingCoreset`` pools (at most ``per_image``
  rows per image, each pool shrunk by a greedy coreset when it exceeds its capacity); the
  bundle's bank is one greedy coreset of ``bank_size`` rows over all the pools;
* for calibration, the patch features of up to ``calib_images`` images are spilled to a
  float16 memmap in a temporary folder (disk, not RAM) and scored after the pass;
* block weights (``dn2.runtime.patchweights``) from per-channel sums over every patch; the
  banks are selected and the calibration scored in the weighted space.

Calibration, from normal data only, by image:

* patch: ``folds``-fold by image — fold f's images are scored against the union of the other
  folds' pools, so no image's own patches are its neighbours. The image threshold is the
  conformal quantile of those held-out image scores at ``fpr``; the pixel threshold is the
  conformal quantile of the held-out images' *map maxima*, so a normal image shows a box over
  the pixel threshold with probability about ``fpr`` too.
* global: eq. 2 leave-one-out by image (an image's own inputs — its tiles — are excluded from
  its neighbours); with T > 1 an image scores the max over its inputs.
* both: the two held-out scores of each calibrated image combined by a rule fitted on them
  (``dn2.runtime.combine``: by default Fisher's over the two z-scores), and the decision
  threshold the conformal quantile of the combined held-out scores at ``fpr`` (so the union
  of the two signals still holds the target rate). The pairs are kept in the manifest, so a
  rule can be re-fitted and measured without re-embedding.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .bank import build_bank
from .bundle import write_bundle
from .combine import DEFAULT_RULE, apply_rule, fit_rule
from .config import COMBINES, MODES, ScoreConfig
from .coreset import StreamingCoreset, greedy_coreset
from .errors import Dn2Error
from .manifest import (
    BankRef,
    GlobalSignal,
    Manifest,
    ModelRef,
    PatchSignal,
    Signals,
    Threshold,
)
from .manifest_fit import FitRecord
from .patchscore import (
    SIGMA,
    PatchScorer,
    cell_scores,
    frame_map,
    patch_rows,
    reduce_cells,
)
from .patchweights import BlockStats, channel_weights, layer_channels
from .scoring import l2normalize
from .threshold import conformal_quantile, quantile_table
from .viewembed import ViewEmbedder
from .views import View

DEFAULTS = {
    # 2048 rows: as good as 4096 within noise, half the kNN's sgemm (BENCHMARKS.md, "Patch kNN")
    "bank_size": 2048,
    "per_image": 512,
    "folds": 5,
    "patch_k": 1,
    "reduction": "topk",
    "topk": 10,
    "calib_images": 200,
    # the pruned patch kNN (``patchscore.pruned_sq``), opt-in: exact image scores, maps less
    # exact (BENCHMARKS.md, "Patch kNN: one sgemm"). 0: every cell against the whole bank.
    "prune": 0,
    # the sub-grid patch kNN (``patchscore.subgrid_sq``; 1: every cell; BENCHMARKS.md, "Sub-grid")
    "cell_step": 2,
    # every layer block of the patch features scaled to the same total variance over the normal
    # patches (``dn2.runtime.patchweights``; BENCHMARKS.md, "Block weights"). False: as given.
    "block_weights": True,
}


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def loo_by_image(x: np.ndarray, image_of: np.ndarray, k: int) -> np.ndarray:
    """eq. 2 score of every row of ``x`` against the rows of *other* images, [N] float32."""
    bank = build_bank(x, "exact")
    t = int(np.bincount(image_of).max())
    kk = min(bank.n, k + t)
    d, ids = bank.search(x, kk)
    other = image_of[ids] != image_of[:, None]
    if (other.sum(axis=1) < k).any():
        raise Dn2Error(f"calibration needs inputs of at least {k} other images per image")
    d = np.where(other, d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(axis=1).astype(np.float32)


def fit_view_bundle(
    model_path,
    output,
    images,
    *,
    mode: str = "both",
    view: View = View(),
    k: int = 2,
    fpr: float = 0.01,
    l2norm: bool = True,
    bank_size: int = DEFAULTS["bank_size"],
    per_image: int = DEFAULTS["per_image"],
    folds: int = DEFAULTS["folds"],
    patch_k: int = DEFAULTS["patch_k"],
    reduction: str = DEFAULTS["reduction"],
    topk: int = DEFAULTS["topk"],
    calib_images: int = DEFAULTS["calib_images"],
    index: str = "auto",
    batch: int = 8,
    threads: Optional[int] = None,
    providers="auto",
    seed: int = 0,
    progress: bool = True,
    jpeg_draft: bool = False,
    combine_rule: str = DEFAULT_RULE,
    prune: int = DEFAULTS["prune"],
    block_weights: bool = DEFAULTS["block_weights"],
    cell_step: int = DEFAULTS["cell_step"],
) -> Path:
    """Fit a view-aware bundle (global, patch or both signals); returns its path. ``prune``:
    rows of the pruned patch kNN's sub-bank (0: every cell scored against the whole bank),
    ``cell_step``: the sub-grid step of the patch kNN (1: every cell exact); both used by the
    calibration here and recorded for scoring."""
    from .embedder import Embedder
    from .fitparts import as_list as _as_list
    from .images import find_images

    if mode not in MODES:
        raise Dn2Error(f"mode: expected one of {', '.join(MODES)}, found {mode!r}", param="mode")
    if not 0.0 < float(fpr) < 1.0:
        raise Dn2Error(f"fpr: expected a rate in (0, 1), found {fpr}", param="fpr")
    if int(prune) < 0:
        raise Dn2Error(f"prune: expected 0 or more sub-bank rows, found {prune}", param="prune")
    if not isinstance(cell_step, int) or not 1 <= cell_step <= 8:
        msg = f"cell_step: expected an integer step from 1 (every cell) to 8, found {cell_step!r}"
        raise Dn2Error(msg, param="cell_step")
    if combine_rule not in COMBINES:
        raise Dn2Error(
            f"combine_rule: expected one of {', '.join(COMBINES)}, found {combine_rule!r}",
            param="combine_rule",
        )
    model_path = Path(model_path)
    emb = Embedder(
        str(model_path),
        providers=providers,
        threads=threads,
        batch_size=batch,
        jpeg_draft=jpeg_draft,
    )
    use_patch = mode in ("patch", "both")
    files, failed = find_images(_as_list(images))
    n_files = len(files)
    folds = max(2, min(int(folds), max(2, n_files)))
    rng = np.random.default_rng(seed)
    fold_of_file = rng.permutation(np.arange(n_files) % folds)
    calib_set = set(np.sort(rng.permutation(n_files)[:calib_images]).tolist())
    ve = ViewEmbedder(emb, view, patches=use_patch)
    t0 = time.perf_counter()
    embs: List[np.ndarray] = []
    names: List[str] = []
    fold_of: List[int] = []
    frame_shapes: List[Tuple[int, int]] = []
    rects_of: List = []
    pools: List[StreamingCoreset] = []
    spill = None
    spill_rows: Dict[int, int] = {}
    stats: Optional[BlockStats] = None
    with tempfile.TemporaryDirectory(prefix="dn2-fit-") as tmp:
        for i, item in enumerate(ve.paths(files)):
            if item.error is not None:
                failed.append((item.name, item.error))
                continue
            names.append(item.name)
            fold_of.append(int(fold_of_file[i]))
            embs.append(item.embeddings)
            frame_shapes.append(item.shape)
            rects_of.append(item.rects)
            if use_patch:
                rows = patch_rows(item.patches).reshape(-1, item.patches.shape[1])
                if stats is None:
                    stats = BlockStats(layer_channels(emb.patch_spec["layers"], rows.shape[1]))
                stats.add(rows)
                if not pools:
                    cap = max(2 * per_image, 4 * bank_size // folds)
                    pools = [
                        StreamingCoreset(
                            rows.shape[1], min(per_image, len(rows)), cap, seed + 31 * f
                        )
                        for f in range(folds)
                    ]
                pools[fold_of[-1]].add_image(rows)
                if i in calib_set:
                    if spill is None:
                        shape = (len(calib_set),) + item.patches.shape
                        spill = np.lib.format.open_memmap(
                            str(Path(tmp) / "calib.npy"), "w+", np.float16, shape
                        )
                    spill_rows[len(names) - 1] = len(spill_rows)
                    spill[spill_rows[len(names) - 1]] = item.patches.astype(np.float16)
            if progress and len(names) % 50 == 0:
                _say(
                    progress, f"  {len(names)}/{n_files} images ({time.perf_counter() - t0:.0f} s)"
                )
        n = len(names)
        if n < max(k + 1, folds):
            raise Dn2Error(
                f"fit needs at least {max(k + 1, folds)} good normal images, found "
                f"{n} ({len(failed)} bad files skipped)"
            )
        t_embed = time.perf_counter() - t0
        _say(
            progress,
            f"embedded {n} images through view {view} ({t_embed:.1f} s); "
            f"{len(failed)} bad files skipped",
        )
        fold_arr = np.asarray(fold_of)
        t_in = len(embs[0])
        x = np.concatenate(embs)
        image_of = np.repeat(np.arange(n), [len(e) for e in embs])
        if l2norm:
            x = l2normalize(x)
        gscores = reduce_cells(loo_by_image(x, image_of, k).reshape(n, t_in), "max")
        gthr = conformal_quantile(gscores, fpr)
        gbank = build_bank(x, index)
        glob = GlobalSignal(
            k=k,
            l2norm=bool(l2norm),
            inputs_per_image=t_in,
            threshold=Threshold.of(dict(gthr, fpr=fpr, quantiles=quantile_table(gscores))),
        )
        patch = None
        patch_bank, pinfo, both_extra = None, None, {}
        if use_patch:
            t1 = time.perf_counter()
            per_fold = max(1, bank_size // folds)
            bw = stats.weights() if block_weights else None
            wch = channel_weights(bw, stats.channels)
            fold_banks = [p.result(per_fold, wch) for p in pools]
            t_bank = time.perf_counter() - t1
            pscores = np.full(n, np.nan, np.float32)
            pmax = np.full(n, np.nan, np.float32)
            top_cells = topk if reduction == "topk" else 1
            for f in range(folds):
                held = [j for j in spill_rows if fold_arr[j] == f]
                if not held:
                    continue
                others = np.concatenate([b for g, b in enumerate(fold_banks) if g != f])
                fb = build_bank(others, "exact")
                for j in held:
                    feats = np.asarray(spill[spill_rows[j]], np.float32)
                    if wch is not None:
                        feats *= wch[None, :, None, None]
                    cells = cell_scores(
                        fb, feats, patch_k, prune=prune, topk=top_cells, step=cell_step
                    )
                    pscores[j] = reduce_cells(cells[None], reduction, topk)[0]
                    h, w = frame_shapes[j]
                    pmax[j] = frame_map(list(cells), rects_of[j], h, w, emb.input_size).max()
            calibrated = ~np.isnan(pscores)
            pthr = conformal_quantile(pscores[calibrated], fpr)
            pix = conformal_quantile(pmax[calibrated], fpr)
            # the bank: one greedy coreset over every fold's pool (not the union of the fold
            # banks, whose separate coresets cover the patches less evenly)
            pooled = np.concatenate([p.pool() for p in pools])
            if wch is not None:
                pooled *= wch
            bank_rows = pooled[np.sort(greedy_coreset(pooled, bank_size, seed=seed + 1))]
            patch_bank = build_bank(bank_rows, index)
            t_fit = time.perf_counter() - t1
            pinfo = {
                "calibrated_images": int(calibrated.sum()),
                "folds": folds,
                "pool_shrinks": int(sum(p.shrinks for p in pools)),
                "bank_seconds": round(t_bank, 2),
                "fit_seconds": round(t_fit, 2),
            }
            calibration = f"{folds}-fold by image: scored against the other folds' patch pools"
            patch = PatchSignal(
                **PatchScorer(patch_bank, patch_k, reduction, topk, SIGMA).params(),
                threshold=Threshold.of(
                    dict(pthr, fpr=fpr, quantiles=quantile_table(pscores[calibrated]))
                ),
                pixel_threshold=Threshold.of(
                    dict(pix, fpr=fpr, what="map maximum of held-out normal images")
                ),
                extra={
                    "compression": "greedy-coreset",
                    "per_image": per_image,
                    "bank_size": int(len(bank_rows)),
                    "layers": emb.patch_spec["layers"],
                    "channels": emb.patch_spec["channels"],
                    "grid": emb.patch_spec["grid"],
                    "calibration": calibration,
                    "prune": int(prune),
                    "cell_step": int(cell_step),
                    **({"block_weights": bw} if bw is not None else {}),
                },
            )
            _say(
                progress,
                f"patch bank: {len(bank_rows)} rows x {bank_rows.shape[1]} "
                f"(greedy coreset of {n} images, {t_bank:.1f} s); threshold "
                f"{pthr['value']:.4g}, pixel threshold {pix['value']:.4g}",
            )
        if mode == "both":
            ok = ~np.isnan(pscores)
            rule = fit_rule(combine_rule, gscores[ok], pscores[ok], gthr["value"], pthr["value"])
            both = apply_rule(rule, gscores[ok], pscores[ok])
            both_extra = {
                "combine": rule,
                "calibration_pairs": {
                    "global": [float(v) for v in gscores[ok]],
                    "patch": [float(v) for v in pscores[ok]],
                },
            }
            thr = dict(
                conformal_quantile(both, fpr),
                method="fpr",
                fpr=fpr,
                quantiles=quantile_table(both),
                calibration=f"{combine_rule} rule over the two held-out scores",
            )
        elif mode == "patch":
            thr = patch.threshold.replace(method="fpr", calibration=calibration).to_dict()
        else:
            thr = dict(
                gthr,
                method="fpr",
                fpr=fpr,
                quantiles=quantile_table(gscores),
                calibration="leave-one-out by image",
            )
    manifest = Manifest(
        model=ModelRef.of_meta(emb.meta),
        bank=BankRef(contents="embeddings" if t_in == 1 else "view-input-embeddings"),
        score=ScoreConfig(
            k=k, l2norm=bool(l2norm), jpeg_draft=bool(jpeg_draft), mode=mode, combine=combine_rule
        ),
        view=view,
        signals=Signals(glob=glob, patch=patch, extra=both_extra),
        threshold=Threshold.of(thr),
        fit=FitRecord(
            images=n,
            kept=n,
            failed=len(failed),
            dropped=0,
            source="images",
            extra={
                "cleaned_fraction": 0.0,
                "seed": int(seed),
                "index": index,
                "embed_seconds": round(t_embed, 2),
                **({"patch": pinfo} if pinfo else {}),
            },
        ),
    )
    report = {
        "kept": names,
        "dropped": [],
        "failed": [list(f) for f in failed],
        "val_failed": [],
        "bank_rows": "view inputs of the kept images, in order",
    }
    out = write_bundle(output, model_path, manifest, gbank, None, report, patch_bank=patch_bank)
    _say(
        progress, f"bundle written: {out} (mode {mode}, view {view}, threshold {thr['value']:.6g})"
    )
    return out


def combine(g, p, mode: str, rule: Optional[Dict]) -> np.ndarray:
    """The decision score of ``mode`` from raw global / patch image scores (``rule``: the
    bundle's combination parameters, ``dn2.runtime.combine.rule_of``)."""
    if mode == "global":
        return np.asarray(g, np.float32)
    if mode == "patch":
        return np.asarray(p, np.float32)
    return apply_rule(rule, g, p)


__all__ = ["fit_view_bundle", "combine", "loo_by_image", "MODES", "DEFAULTS"]
