"""Camera-path study: a bank fitted on stills, watching lossy, noisy video of OTHER normal pieces.

    python -m dn2.tools.studies.camera --model lite0.onnx --json camera.json [--frames 1000]

Fits three bundles on the first ``--train`` textile stills (conformal-clip-data, gray pieces):
colour scoring forced (``--color color``), the default (gray bank: ``--color auto``), and the
default with ``--augment camera``. Renders the demo's production line (held-out normal pieces,
``--defects`` global-defect pieces injected, NOT screened for visibility) through OpenCV's real
writers: FFV1 (lossless), MJPG and mp4v, with and without per-channel Gaussian sensor noise of
``--sigma`` levels, decodes every frame, scores it with each bundle and runs the watch loop's
own :class:`~dn2.runtime.watch.decide.Decider` (``--min-consecutive``) over the scores. Prints
false alerts per 1000 frames, defect recall (the demo's verdict rule) and the share of normal
frames above the threshold, per condition and bundle.
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

CONDITIONS = [
    ("lossless", "FFV1", ".avi", 0.0),
    ("lossless+noise", "FFV1", ".avi", None),
    ("MJPG", "MJPG", ".avi", 0.0),
    ("MJPG+noise", "MJPG", ".avi", None),
    ("mp4v", "mp4v", ".mp4", 0.0),
    ("mp4v+noise", "mp4v", ".mp4", None),
]
BUNDLES = [
    ("colour, no augment", dict(color="color")),
    ("gray (default)", dict()),
    ("gray + augment camera", dict(augment="camera")),
]


def render(plan, path: Path, fourcc: str, sigma: float, seed: int) -> List[np.ndarray]:
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
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def alerts(scores, threshold: float, min_consecutive: int):
    from dn2.runtime.watch.decide import Decider

    from ..demo.verdict import Alert

    d, out, start = Decider(threshold, min_consecutive), [], None
    for i, s in enumerate(scores):
        t = d.update(float(s), i, i / 10.0)
        if t is not None and t.kind == "start":
            start = t.first_frame
        elif t is not None and t.kind == "end":
            out.append(Alert(start, i))
            start = None
    if start is not None:
        out.append(Alert(start, None))
    return out


def run(
    model: str,
    work: Path,
    train: int,
    frames: int,
    n_defects: int,
    sigma: float,
    min_consecutive: int,
    seed: int,
    threads: Optional[int],
    log,
) -> Dict:
    import conformal_clip_data as ccd

    from dn2.runtime.detector import Detector
    from dn2.runtime.embedder import Embedder
    from dn2.runtime.fit import fit_bundle

    from ..demo.verdict import judge
    from ..demo.video import Piece, ground_truth, plan_line

    nominal = sorted(str(p) for p in Path(ccd.nominal_dir()).glob("*.jpg"))
    defects = sorted(str(p) for p in Path(ccd.global_dir()).glob("*.jpg"))
    dets = {}
    for name, kw in BUNDLES:
        t0 = time.monotonic()
        b = fit_bundle(
            model,
            work / name.replace(" ", "_").replace(",", ""),
            images=nominal[:train],
            threads=threads,
            progress=False,
            seed=seed,
            **kw,
        )
        dets[name] = Detector.load(b, threads=threads, load_model=False)
        log(f"fit {name}: threshold {dets[name].threshold:.4g} ({time.monotonic() - t0:.0f} s)")
    embedders = {g: Embedder(model, threads=threads, gray=g) for g in (False, True)}
    plan = plan_line(
        nominal[train:],
        [Piece(p, "global") for p in defects],
        frames,
        n_defects=n_defects,
        seed=seed,
    )
    truth = [r.__dict__ for r in ground_truth(plan)]
    in_defect = np.zeros(frames, bool)
    for r in truth:
        in_defect[r["visible_start"] : r["visible_end"] + 1] = True
    rows = []
    for cond, fourcc, ext, sig in CONDITIONS:
        sig = sigma if sig is None else sig
        vid = render(plan, work / f"{cond}{ext}", fourcc, sig, seed)
        emb = {g: e.embed_images(vid) for g, e in embedders.items()}
        for name, det in dets.items():
            s = det.score_embeddings(emb[det.manifest.score.color == "gray"])
            v = judge(truth, alerts(s, det.threshold, min_consecutive), n_frames=len(s))
            rows.append(
                {
                    "condition": cond,
                    "bundle": name,
                    "frames": len(s),
                    "false_alerts": v.false_alerts,
                    "false_per_1000": round(1000.0 * v.false_alerts / len(s), 2),
                    "found": v.found,
                    "injected": v.injected,
                    "recall": round(v.found / max(v.injected, 1), 4),
                    "normal_frames_above": round(float(np.mean(s[~in_defect] > det.threshold)), 4),
                    "median_normal_x_threshold": round(
                        float(np.median(s[~in_defect]) / det.threshold), 3
                    ),
                }
            )
            log(
                f"{cond:<15} {name:<22} false/1000 {rows[-1]['false_per_1000']:>6} "
                f"recall {v.found}/{v.injected}  normal frames above "
                f"{rows[-1]['normal_frames_above']:.1%}"
            )
    return {
        "model": model,
        "train": train,
        "frames": frames,
        "defects": n_defects,
        "sigma": sigma,
        "min_consecutive": min_consecutive,
        "seed": seed,
        "rows": rows,
    }


def table(res: Dict) -> str:
    lines = [
        "| condition | bundle | false alerts / 1000 frames | recall | normal frames above "
        "| median normal score / threshold |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['condition']} | {r['bundle']} | {r['false_per_1000']} | "
            f"{r['found']}/{r['injected']} | {r['normal_frames_above']:.1%} | "
            f"{r['median_normal_x_threshold']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.camera", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--defects", type=int, default=10)
    p.add_argument("--sigma", type=float, default=3.0)
    p.add_argument("--min-consecutive", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dn2-camera-study-") as tmp:
        res = run(
            a.model,
            Path(tmp),
            a.train,
            a.frames,
            a.defects,
            a.sigma,
            a.min_consecutive,
            a.seed,
            a.threads,
            lambda m: print(m, file=sys.stderr, flush=True),
        )
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
