"""dn2-fit: fit a bundle (bank + threshold, optionally groups) from normal images.

    dn2-fit MODEL.onnx NORMAL... --output BUNDLE [--k 2] [--clean F] [--kmeans C]
            [--index auto|exact|hnsw] [--fpr F] [--group-size M] [--batch N]
            [--no-l2norm | --l2norm-select] [--jpeg-draft] [--threads N] [--providers ...]
            [--val-normal ...] [--val-anomalous ...]

    dn2-fit --append BUNDLE NEW... [--output OUT] [--key PRIVATE.pem]   (dn2.runtime.fit_append)

NORMAL: image files, folders (recursive) or globs. Bad files are skipped, listed and counted.

Exit codes: 0 bundle written (skipped bad files, if any, are listed on stderr); 2 nothing
written (usage error, unusable model, too few good images, or another dn2 error); 130
interrupted. The same table as every dn2 command (dn2.runtime.cliargs.EXIT_CODES).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .cliargs import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    engine_parser,
    library_kwargs,
    new_parser,
    report_error,
    start,
)
from .combine import DEFAULT_RULE, RULES
from .config import FitConfig
from .errors import Dn2Error
from .fit_append_cli import add_append_args, run_append
from .fit_view_cli import view_fit as fit_views
from .ray_inputs import RAY_PARAMS, add_ray_args, ray_address
from .scoring import DEFAULT_L2NORM
from .threshold import METHODS


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "fit", "Fit a dn2 bundle from normal images (paper 3.1-3.3).", engine_parser(batch=8)
    )
    p.add_argument("model", nargs="?", help="dn2 ONNX model (from dn2-export)")
    p.add_argument(
        "normal",
        nargs="*",
        help="normal inputs: image files, folders (recursive), globs, video files, "
        "camera indices, rtsp/http URLs, GStreamer pipelines (quoted)",
    )
    p.add_argument(
        "--output", "-o", help="bundle directory to write (required, except with --append)"
    )
    add_append_args(p)
    p.add_argument("--k", type=int, default=2, help="nearest neighbours per score (default 2)")
    p.add_argument(
        "--clean",
        type=float,
        default=0.0,
        metavar="F",
        help="drop this fraction of training images with the largest leave-one-out "
        "kNN distance (paper 3.2 uses 0.5; default off)",
    )
    p.add_argument(
        "--kmeans",
        type=int,
        default=None,
        metavar="C",
        help="compress the bank to C k-means centres (paper 5.1; dn2[kmeans])",
    )
    p.add_argument(
        "--kmeans-folds",
        type=int,
        default=FitConfig.kmeans_folds,
        metavar="F",
        help="with --kmeans: folds of the held-out threshold calibration (centres "
        "fitted without the scored image's fold; default %(default)s)",
    )
    p.add_argument(
        "--index",
        choices=("auto", "exact", "hnsw"),
        default="auto",
        help="bank backend (auto: exact below the benchmarked size cut)",
    )
    p.add_argument(
        "--fpr",
        type=float,
        default=0.01,
        help="target false-positive rate on normal images (default 0.01)",
    )
    p.add_argument(
        "--threshold-method",
        choices=METHODS,
        default="fpr",
        help="fpr: leave-one-out quantile on the training images (default); "
        "val-fpr / youden / f1 need --val-normal (and --val-anomalous)",
    )
    p.add_argument(
        "--val-normal",
        nargs="+",
        default=None,
        metavar="PATH",
        help="labelled normal validation images",
    )
    p.add_argument(
        "--val-anomalous",
        nargs="+",
        default=None,
        metavar="PATH",
        help="labelled anomalous validation images",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=None,
        metavar="M",
        help="also fit group scoring from sampled sets of M normal images",
    )
    p.add_argument(
        "--groups",
        type=int,
        default=1000,
        metavar="G",
        help="number of sampled normal groups (default 1000)",
    )
    p.add_argument(
        "--group-dirs",
        nargs="+",
        default=None,
        metavar="DIR",
        help="folder(s) of group folders (each sub-folder is one normal group)",
    )
    p.add_argument(
        "--pooling", choices=("mean", "max"), default="mean", help="group pooling (paper 3.3: mean)"
    )
    p.add_argument(
        "--l2norm",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_L2NORM,
        help="L2-normalise embeddings before the bank and the score (default on: "
        "+1.0 pt mean ROC-AUC on Fashion-MNIST, BENCHMARKS.md); --no-l2norm "
        "scores plain euclidean distances as in the paper",
    )
    p.add_argument(
        "--l2norm-select",
        action="store_true",
        help="choose L2 normalisation on or off by ROC-AUC on --val-normal vs "
        "--val-anomalous (both needed); the choice and both AUCs go into the "
        "bundle manifest",
    )
    p.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="decode large JPEGs at 1/2-1/8 scale in libjpeg (720p: decode + resize "
        "6.2 -> 3.5 ms, 1080p: 12.0 -> 6.6 ms; embedding cosine to the "
        "torchvision pipeline >= 0.9975 on real photos, 0.99998 without); "
        "recorded in the bundle, so dn2-score decodes the same way",
    )
    p.add_argument(
        "--mode",
        choices=("auto", "global", "patch", "both"),
        default="auto",
        help="signals: global (pooled embedding kNN, paper 3.1), patch (patch kNN "
        "with anomaly maps; needs a model from dn2-export --patches), both "
        "(the two combined by --combine, calibrated on held-out normal images). "
        "auto (default): both for a model with the patches output, else global",
    )
    p.add_argument(
        "--view",
        default="crop",
        metavar="crop|full|tiles=RxC",
        help="how a frame becomes model inputs: centre crop (default, paper 4.6), "
        "the full frame, or R x C tiles batched through the model; fixed here "
        "and recorded in the bundle",
    )
    p.add_argument(
        "--roi",
        default=None,
        metavar="x,y,w,h",
        help="look only at this rectangle of each frame (pixels)",
    )
    p.add_argument(
        "--combine",
        choices=RULES,
        default=DEFAULT_RULE,
        help="mode both: how the two scores make the decision score, each rule fitted on "
        "the held-out normal scores (z: each signal standardised by its normal mean and "
        "sd): cfisher (default: fisher with the patch term weighted by (1 - rho)^2, rho the "
        "pairs' correlation), fisher (-2 sum log p of the z-scores' Gaussian tails), zmax (the "
        "larger z), zsum, max / sum (of score / its threshold); then calibrated again",
    )
    p.add_argument(
        "--patch-bank",
        type=int,
        default=None,
        metavar="N",
        help="patch bank rows after the greedy coreset (default 2048)",
    )
    p.add_argument(
        "--patch-topk",
        type=int,
        default=None,
        metavar="T",
        help="image patch score = mean of the T highest cell scores (default 10; 1 = the max)",
    )
    p.add_argument(
        "--patch-prune",
        type=int,
        default=None,
        metavar="R",
        help="opt-in pruned patch kNN with a sub-bank of R rows (at most half the bank): the "
        "image score stays exact and scoring is faster, but cells that cannot reach the top "
        "cells keep the sub-bank's upper bound, which blurs the map (default 0: every cell "
        "against the whole bank)",
    )
    p.add_argument(
        "--patch-cell-step",
        type=int,
        default=None,
        metavar="S",
        help="patch kNN on every S-th cell of each axis, the cells between interpolated and "
        "the image's top cells scored exactly (default 2: about a third of the kNN's work for "
        "the same maps and scores; 1: every cell against the whole bank)",
    )
    p.add_argument(
        "--patch-weights",
        choices=("blocks", "none"),
        default="blocks",
        help="blocks (default): each layer block of the patch features scaled to the same "
        "total variance over the normal patches before the kNN (recorded in the bundle); "
        "none: the features as the model gives them",
    )
    p.add_argument(
        "--color",
        choices=("auto", "gray", "color"),
        default="auto",
        help="auto (default): when the normal images are monochrome, score every "
        "input converted to gray, so a camera's colour cast or colour noise "
        "cannot decide; gray / color force it. Recorded in the bundle",
    )
    p.add_argument(
        "--augment",
        choices=("auto", "none", "camera"),
        default="auto",
        help="camera: add variants of every normal image made the way a camera "
        "path changes it (real MJPG / mp4v round trips, per-channel sensor "
        "noise, a few %% of scale, brightness, contrast; seeded) to the bank "
        "(--augment-into); auto (default): camera for still images into an exact "
        "bank (on the workers with --ray), none for video / stream frames and "
        "--kmeans; none: off "
        "(one embedding pass; BENCHMARKS.md 'Camera path')",
    )
    p.add_argument(
        "--augment-copies",
        type=int,
        default=1,
        metavar="N",
        help="variants per normal image with --augment camera (default 1)",
    )
    p.add_argument(
        "--augment-into",
        choices=("both", "bank", "calibration"),
        default="bank",
        help="with --augment camera: the variants join only the bank (default: camera "
        "frames find their neighbours, the threshold stays the stills' own), the bank "
        "and the calibration (both: a higher threshold, less recall), or only the "
        "calibration (BENCHMARKS.md 'Camera path')",
    )
    p.add_argument(
        "--near-copy-ratio",
        type=float,
        default=FitConfig.near_copy_ratio,
        metavar="R",
        help="images whose embeddings are closer than R x the set's median pair distance "
        "are near copies, calibrated as one group (default %(default)g; 0: exact copies only)",
    )
    p.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="videos and streams: take every N-th frame (default 1)",
    )
    p.add_argument(
        "--max-frames",
        type=int,
        default=None,
        metavar="N",
        help="videos and streams: at most N frames from each (a live source needs "
        "this or --seconds)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help="videos and streams: the first S seconds of each (source clock)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a live source not up yet is retried with backoff for S seconds",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for k-means, groups, folds")
    add_ray_args(p)
    return p


# fit_bundle's parameter names that differ from the option names (for --config and errors)
PARAMS = {
    "model_path": "model",
    "images": "normal",
    "n_groups": "groups",
    "combine_rule": "combine",
    **RAY_PARAMS,
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    a = start(parser, argv, "fit", PARAMS)
    if isinstance(a, int):
        return a
    if a.append:
        return run_append(a, parser)
    if not a.model or not a.normal or not a.output:
        missing = [n for n, v in (("MODEL", a.model), ("NORMAL...", a.normal)) if not v]
        report_error(
            "fit",
            "expected MODEL NORMAL... --output BUNDLE (or --append BUNDLE NEW...), found no "
            + (", ".join(missing) if missing else "--output"),
            parser,
        )
        return EXIT_USAGE
    from .fit import fit_bundle

    fit, ray_kw = fit_bundle, {}  # --every, --max-frames, ... reach fit_bundle by name
    if a.ray is not None:  # the same fit, with the embedding on a Ray cluster
        from .ray_fit import fit_bundle_ray as fit

        ray_kw = dict(
            address=ray_address(a.ray),
            workers=a.ray_workers,
            gpus=a.ray_gpus,
            num_cpus=a.ray_cpus,
            shards_dir=a.ray_shards,
        )
    try:
        view_fit = fit_views(a)
        if view_fit is not None:
            print(view_fit)
            return EXIT_OK
        # every fit_bundle parameter and FitConfig field that is an option (PARAMS: the
        # names that differ); fit_bundle validates them as a FitConfig
        kw = library_kwargs(
            fit_bundle,
            a,
            PARAMS,
            progress=not a.quiet,
            l2norm="auto" if a.l2norm_select else a.l2norm,
        )
        out = fit(**kw, **ray_kw)
    except Dn2Error as exc:
        report_error("fit", exc, parser, PARAMS)
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error("fit", "interrupted; nothing written")
        return EXIT_INTERRUPTED
    print(out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
