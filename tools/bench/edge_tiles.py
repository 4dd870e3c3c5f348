"""Is an object at the edge of a wide frame found as often as in its centre? Views compared.

1280x720 frames are mosaics of real textile images (5 x 3 pieces of 256 x 240, drawn at random
per frame: the "web" a line camera sees); a 200 x 200 blob of a real photo (scikit-image
samples, ``dn2.tools.eval.locset``) is pasted at the left or right edge, or in the centre.
JPEG quality 90 like a camera's. For each view (``crop`` = today's centre crop, ``tiles=RxC``,
``full``) a bundle is fitted on normal frames, and the rate of flagged frames at its threshold
and the image ROC-AUC against normal frames are reported for edge and centre objects.

    python -m dn2.tools.bench.edge_tiles --model M.onnx [--views crop tiles=2x4] [--mode both]
        [--train 40] [--test 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

W, H, OBJ = 1280, 720, 200


def _mosaic(pieces: List[np.ndarray], rng) -> np.ndarray:
    frame = np.zeros((H, W, 3), np.uint8)
    for r in range(3):
        for c in range(5):
            p = pieces[int(rng.integers(len(pieces)))]
            frame[r * 240 : (r + 1) * 240, c * 256 : (c + 1) * 256] = cv2.resize(p, (256, 240))
    return frame


def _with_object(frame: np.ndarray, where: str, objects, rng):
    from dn2.tools.eval.locset import blob_mask

    src = objects[int(rng.integers(len(objects)))]
    sh, sw = src.shape[:2]
    y0, x0 = int(rng.integers(0, sh - OBJ)), int(rng.integers(0, sw - OBJ))
    crop = src[y0 : y0 + OBJ, x0 : x0 + OBJ].astype(np.float32)
    a = blob_mask(OBJ, OBJ, rng)[..., None]
    y = int(rng.integers(0, H - OBJ))
    if where == "edge":
        x = int(rng.integers(0, 60)) if rng.random() < 0.5 else W - OBJ - int(rng.integers(0, 60))
    else:
        x = W // 2 - OBJ // 2 + int(rng.integers(-60, 60))
    out = frame.astype(np.float32)
    out[y : y + OBJ, x : x + OBJ] = out[y : y + OBJ, x : x + OBJ] * (1 - a) + crop * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def make_frames(root: Path, n_train: int, n_test: int, seed: int = 0) -> Dict[str, List[str]]:
    import conformal_clip_data as ccd

    from dn2.tools.eval.locset import _objects

    rng = np.random.default_rng(seed)
    noms = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    pieces = [cv2.imread(str(p)) for p in noms[:300]]
    objects = _objects()
    sets: Dict[str, List[str]] = {"train": [], "normal": [], "edge": [], "centre": []}
    for kind, n in (("train", n_train), ("normal", n_test), ("edge", n_test), ("centre", n_test)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            f = _mosaic(pieces, rng)
            if kind in ("edge", "centre"):
                f = _with_object(f, kind, objects, rng)
            p = root / kind / f"{i:03d}.jpg"
            cv2.imwrite(str(p), f, [cv2.IMWRITE_JPEG_QUALITY, 90])
            sets[kind].append(str(p))
    return sets


def run(
    model: str,
    views: List[str],
    mode: str,
    n_train: int,
    n_test: int,
    threads: Optional[int],
    log=print,
) -> Dict:
    from dn2.runtime.detector import Detector
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.threshold import roc_auc
    from dn2.runtime.views import View

    out: Dict = {
        "frame": [W, H],
        "object": OBJ,
        "mode": mode,
        "n_train": n_train,
        "n_test": n_test,
        "views": {},
    }
    with tempfile.TemporaryDirectory(prefix="dn2-edge-") as tmp:
        sets = make_frames(Path(tmp), n_train, n_test)
        for v in views:
            t0 = time.perf_counter()
            b = Path(tmp) / f"b_{v.replace('=', '_')}"
            fit_view_bundle(
                model,
                b,
                sets["train"],
                mode=mode,
                view=View.parse(v),
                fpr=0.05,
                threads=threads,
                progress=False,
            )
            det = Detector.load(b, threads=threads)
            t1 = time.perf_counter()
            sc = {
                k: [r.score for r in det.analyze_paths(sets[k], maps=False)]
                for k in ("normal", "edge", "centre")
            }
            t2 = time.perf_counter()
            thr = det.threshold
            res = {
                "flagged": {k: float(np.mean(np.asarray(s) > thr)) for k, s in sc.items()},
                "auroc": {k: roc_auc(sc["normal"], sc[k]) for k in ("edge", "centre")},
                "fit_s": round(t1 - t0, 1),
                "score_s_per_frame": round((t2 - t1) / (3 * n_test), 3),
            }
            out["views"][v] = res
            log(
                f"{v}: flagged normal {res['flagged']['normal']:.2f} edge "
                f"{res['flagged']['edge']:.2f} centre {res['flagged']['centre']:.2f}; AUROC "
                f"edge {res['auroc']['edge']:.3f} centre {res['auroc']['centre']:.3f}"
            )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.edge_tiles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--views", nargs="+", default=["crop", "tiles=2x4"])
    p.add_argument("--mode", default="both", choices=("global", "patch", "both"))
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--test", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = run(
        a.model,
        a.views,
        a.mode,
        a.train,
        a.test,
        a.threads,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
