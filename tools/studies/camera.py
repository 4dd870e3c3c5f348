"""Camera-path study: a bank fitted on stills, watching lossy, noisy video of OTHER normal pieces.

    python -m dn2.tools.studies.camera --model lite0.onnx --json camera.json \\
        [--frames 1000] [--seeds 0,1] [--bundles default,augment] [--min-consecutive 3,5]

Fits bundles on the first ``--train`` textile stills (conformal-clip-data, gray pieces) —
``colour`` (``--color color``), ``plain`` (the gray bank of ``--color auto``, ``--augment
none``), ``default`` (the defaults: gray, camera variants in the bank), ``augment``
(``--augment camera --augment-into both``: variants join the bank and the calibration),
``augment-bank`` / ``augment-calib`` (``--augment-into bank | calibration``), ``fpr005`` /
``augment-bank-fpr005`` (the same at ``--fpr 0.005``) — and ``video``: per condition, a
bundle fitted the way the README tells users, from a video of the ``--train`` pieces passing
the camera, rendered through the same writer and noise as the watched line (every
``--fit-every``-th frame; blocked hold-out calibration). Renders the demo's production line
(held-out normal pieces, ``--defects`` global-defect pieces per 1000 frames, NOT screened for
visibility), one line per ``--seeds`` entry (piece order, defect sample and noise differ),
through OpenCV's real writers — FFV1 (lossless), MJPG and mp4v, with and without per-channel
Gaussian sensor noise of ``--sigma`` levels — decodes every frame, scores it with each bundle
and runs the watch loop's own :class:`~dn2.runtime.watch.decide.Decider` over the scores for
each ``--min-consecutive``. Prints totals over the seeds: false alerts (and per 1000 frames;
split into alerts opened by a piece at rest and by the join between two pieces), defect recall
(the demo's verdict rule), the share of normal frames above the threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .camera_lines import _ints, add_line, line_stats, rows_of, table

CONDITIONS = [
    ("lossless", "FFV1", ".avi", 0.0),
    ("lossless+noise", "FFV1", ".avi", None),
    ("MJPG", "MJPG", ".avi", 0.0),
    ("MJPG+noise", "MJPG", ".avi", None),
    ("mp4v", "mp4v", ".mp4", 0.0),
    ("mp4v+noise", "mp4v", ".mp4", None),
]
BUNDLES = {
    "colour": ("colour, no augment", dict(color="color", augment="none")),
    "plain": ("gray, no augment", dict(augment="none")),
    "default": ("gray + augment bank (default)", dict()),
    "augment": (
        "augment, bank and calibration",
        dict(augment="camera", augment_into="both"),
    ),
    "augment-bank": ("augment, bank only", dict(augment="camera", augment_into="bank")),
    "augment-calib": (
        "augment, calibration only",
        dict(augment="camera", augment_into="calibration"),
    ),
    "fpr005": ("gray, no augment, fpr 0.005", dict(augment="none", fpr=0.005)),
    "augment-bank-fpr005": (
        "augment bank only, fpr 0.005",
        dict(augment="camera", augment_into="bank", fpr=0.005),
    ),
    "video": ("fit from this camera's video", None),
}


def render(plan, path: Path, fourcc: str, sigma: float, seed: int) -> Path:
    """Write the line through OpenCV's real ``fourcc`` writer (+ sensor noise)."""
    import cv2

    from ..demo.video import PieceImages, render_frame

    images, rng = PieceImages(plan.height), np.random.default_rng(seed)
    vw = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*fourcc), plan.fps, (plan.width, plan.height)
    )
    if not vw.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
    for t in range(plan.n_frames):
        f = render_frame(plan, t, images)
        if sigma:
            f = np.clip(f + rng.normal(0.0, sigma, f.shape), 0, 255).astype(np.uint8)
        vw.write(f)
    vw.release()
    return path


def embed_video(path: Path, embedder, chunk: int = 128) -> np.ndarray:
    """Every decoded frame of ``path`` embedded, ``chunk`` frames in memory at a time; a
    frame identical to the one before it (a piece at rest, no noise, an intra-frame codec)
    reuses its embedding: the same pixels give the same embedding."""
    import cv2

    cap, parts, buf, index, prev = cv2.VideoCapture(str(path)), [], [], [], None
    while True:
        ok, f = cap.read()
        if ok:
            if prev is not None and np.array_equal(f, prev):
                index.append(len(buf) - 1 + sum(len(p) for p in parts))
            else:
                buf.append(f)
                index.append(len(buf) - 1 + sum(len(p) for p in parts))
            prev = f
        if buf and (not ok or len(buf) == chunk):
            parts.append(embedder.embed_images(buf))
            buf = []
        if not ok:
            break
    cap.release()
    return np.vstack(parts)[np.asarray(index)]


def fit_stills(model, work: Path, names: List[str], stills, threads, seed, log) -> Dict:
    from dn2.runtime.detector import Detector
    from dn2.runtime.fit import fit_bundle

    dets = {}
    for key in names:
        label, kw = BUNDLES[key]
        if kw is None:
            continue
        t0 = time.monotonic()
        b = fit_bundle(
            model, work / key, images=stills, threads=threads, progress=False, seed=seed, **kw
        )
        dets[key] = Detector.load(b, threads=threads, load_model=False)
        log(f"fit {label}: threshold {dets[key].threshold:.4g} ({time.monotonic() - t0:.0f} s)")
    return dets


def fit_from_video(model, work: Path, stills, cond, fit_every, threads, seed, log):
    """The README's flow: a bundle fitted from a video of the normal pieces through the camera."""
    from dn2.runtime.detector import Detector
    from dn2.runtime.fit import fit_bundle

    from ..demo.video import pieces_needed, plan_line

    name, fourcc, ext, sig = cond
    cycle = 20
    plan = plan_line(stills, [], (len(stills) - 4) * cycle, n_defects=0, seed=seed + 1000)
    assert pieces_needed(plan.n_frames, plan.move_frames, plan.dwell_frames) <= len(stills)
    vid = render(plan, work / f"fit-{name}{ext}", fourcc, sig, seed + 1000)
    t0 = time.monotonic()
    b = fit_bundle(
        model,
        work / f"video-{name}",
        images=[str(vid)],
        every=fit_every,
        threads=threads,
        progress=False,
        seed=seed,
    )
    vid.unlink()
    det = Detector.load(b, threads=threads, load_model=False)
    log(
        f"fit from {name} video ({plan.n_frames} frames, every {fit_every}): threshold "
        f"{det.threshold:.4g}, colour {det.manifest.score.color} "
        f"({time.monotonic() - t0:.0f} s)"
    )
    return det


def run(
    model: str,
    work: Path,
    train: int,
    frames: int,
    n_defects: int,
    sigma: float,
    min_consecutive: List[int],
    seeds: List[int],
    bundles: List[str],
    conditions: List[str],
    fit_every: int,
    threads: Optional[int],
    log,
    fit_seed: Optional[int] = None,
    save: Optional[Path] = None,
) -> Dict:
    import conformal_clip_data as ccd

    from dn2.runtime.embedder import Embedder

    from ..demo.video import Piece, ground_truth, plan_line

    nominal = sorted(str(p) for p in Path(ccd.nominal_dir()).glob("*.jpg"))
    defects = sorted(str(p) for p in Path(ccd.global_dir()).glob("*.jpg"))
    seed0 = seeds[0] if fit_seed is None else int(fit_seed)
    dets = fit_stills(model, work, bundles, nominal[:train], threads, seed0, log)
    embedders = {g: Embedder(model, threads=threads, gray=g) for g in (False, True)}
    totals: Dict = {}
    for cond in [c for c in CONDITIONS if c[0] in conditions]:
        name, fourcc, ext, sig = cond
        sig = sigma if sig is None else sig
        here = dict(dets)
        if "video" in bundles:
            here["video"] = fit_from_video(
                model,
                work,
                nominal[:train],
                (name, fourcc, ext, sig),
                fit_every,
                threads,
                seed0,
                log,
            )
        for seed in seeds:
            plan = plan_line(
                nominal[train:],
                [Piece(p, "global") for p in defects],
                frames,
                n_defects=n_defects * frames // 1000,
                seed=seed,
            )
            truth = [r.__dict__ for r in ground_truth(plan)]
            rest = (np.arange(frames) % plan.cycle) >= plan.move_frames - 1
            vid = render(plan, work / f"{name}-{seed}{ext}", fourcc, sig, seed)
            grays = {d.manifest.score.color == "gray" for d in here.values()}
            emb = {g: embed_video(vid, embedders[g]) for g in grays}
            vid.unlink()
            scores = {}
            for key, det in here.items():
                s = scores[key] = det.score_embeddings(emb[det.manifest.score.color == "gray"])
                for mc in min_consecutive:
                    v = line_stats(s, det.threshold, truth, rest, mc)
                    add_line(totals, (name, key, mc), v)
                    log(
                        f"{name:<15} {key:<14} seed {seed} mc {mc}: false {v['false']} "
                        f"({v['piece']} at rest) recall {v['found']}/{v['injected']} in "
                        f"{len(s)} frames"
                    )
            if save is not None:
                from .camera_lines import save_line

                save_line(save, name, seed, scores, here, truth, rest)
    rows = rows_of(totals, {k: v[0] for k, v in BUNDLES.items()})
    return {
        "model": model,
        "train": train,
        "frames_per_line": frames,
        "seeds": seeds,
        "defects_per_1000": n_defects,
        "sigma": sigma,
        "fit_every": fit_every,
        "fit_seed": seed0,
        "rows": rows,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.camera", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--frames", type=int, default=1000, help="frames per line (per seed)")
    p.add_argument("--defects", type=int, default=10, help="defect pieces per 1000 frames")
    p.add_argument("--sigma", type=float, default=3.0)
    p.add_argument("--min-consecutive", type=_ints, default=[3], help="e.g. 3,5")
    p.add_argument("--seeds", type=_ints, default=[0], help="one line per seed, e.g. 0,1,2")
    p.add_argument("--bundles", default="plain,augment-bank", help=",".join(BUNDLES))
    p.add_argument("--conditions", default=",".join(c[0] for c in CONDITIONS))
    p.add_argument("--fit-every", type=int, default=5, help="video bundle: every N-th frame")
    p.add_argument("--threads", type=int)
    p.add_argument(
        "--fit-seed", type=int, help="seed of the fits (augmentation); default: the first seed"
    )
    p.add_argument(
        "--save",
        type=Path,
        help="folder: each line's per-frame scores, thresholds and ground truth (.npz), "
        "for python -m dn2.tools.studies.camera_lines",
    )
    a = p.parse_args(argv)
    bundles = [b for b in a.bundles.split(",") if b]
    bad = [b for b in bundles if b not in BUNDLES]
    if bad:
        p.error(f"--bundles: expected names from {', '.join(BUNDLES)}, found {', '.join(bad)}")
    with tempfile.TemporaryDirectory(prefix="dn2-camera-study-") as tmp:
        res = run(
            a.model,
            Path(tmp),
            a.train,
            a.frames,
            a.defects,
            a.sigma,
            a.min_consecutive,
            a.seeds,
            bundles,
            a.conditions.split(","),
            a.fit_every,
            a.threads,
            lambda m: print(m, file=sys.stderr, flush=True),
            fit_seed=a.fit_seed,
            save=a.save,
        )
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
