"""Evaluate on your own folders in the MVTec AD / anomalib ``Folder`` layout.

    DIR/train/good/            normal training images
    DIR/test/good/             normal test images
    DIR/test/<defect>/         anomalous test images, one folder per defect type
    DIR/ground_truth/<defect>/<name>_mask.png   optional masks (non-zero = defect)

    python -m dn2.tools.eval.folder DIR --model MODEL.onnx [--mode both] [--view full]
        [--bundle OUT | --use-bundle B] [--json OUT.json] [--plots PLOTDIR] [--threads 2]

Fits a bundle on ``train/good`` (or uses ``--use-bundle``), scores every test image with maps
and reports image ROC-AUC per defect type and overall, the decisions at the bundle's threshold
(TPR per defect type, FPR on test/good), and where masks exist pixel ROC-AUC and PRO
(``dn2.tools.eval.locmetrics``). ``--plots`` writes ROC curves on a log-FPR axis with the operating
point marked, and thumbnails (heatmap overlays) of the worst misses and the worst false alarms.
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

from dn2.runtime.errors import Dn2Error
from dn2.runtime.images import find_images, read_image
from dn2.runtime.threshold import roc_auc

from .locmetrics import aupro, pixel_auc, roc_points

N_THUMBS = 6


def scan(root: Path) -> Dict:
    """{'train': [paths], 'test': {type: [paths]}, 'masks': {path: mask path or None}}."""
    if not (root / "train" / "good").is_dir() or not (root / "test" / "good").is_dir():
        raise Dn2Error(
            f"{root}: expected train/good and test/good folders (MVTec AD / anomalib "
            f"Folder layout), found {sorted(p.name for p in root.iterdir())}"
        )
    train, _ = find_images([str(root / "train" / "good")])
    test: Dict[str, List[str]] = {}
    masks: Dict[str, Optional[str]] = {}
    for d in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        files, _ = find_images([str(d)])
        test[d.name] = files
        for f in files:
            m = root / "ground_truth" / d.name / (Path(f).stem + "_mask.png")
            masks[f] = str(m) if m.is_file() else None
    if len(test) < 2:
        raise Dn2Error(
            f"{root}/test: expected good and at least one defect folder, found {sorted(test)}"
        )
    return {"train": train, "test": test, "masks": masks}


def _mask(path: Optional[str], shape) -> np.ndarray:
    if path is None:
        return np.zeros(shape, np.uint8)
    m = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise Dn2Error(f"{path}: expected a mask image, found an unreadable file")
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return m


def evaluate_folder(
    root,
    model: Optional[str] = None,
    bundle: Optional[str] = None,
    use_bundle: Optional[str] = None,
    mode: str = "both",
    view: str = "crop",
    roi: Optional[str] = None,
    threads: Optional[int] = None,
    plots: Optional[str] = None,
    fit_kwargs: Optional[Dict] = None,
    log=lambda m: print(m, file=sys.stderr),
) -> Dict:
    from dn2.runtime.detector import Detector

    root = Path(root)
    s = scan(root)
    t0 = time.perf_counter()
    tmp = None
    if use_bundle is None:
        from dn2.runtime.patchfit import fit_view_bundle
        from dn2.runtime.views import View

        if model is None:
            raise Dn2Error("folder eval: expected --model (to fit) or --use-bundle, found neither")
        if bundle is None:
            tmp = tempfile.TemporaryDirectory(prefix="dn2-feval-")
            bundle = str(Path(tmp.name) / "bundle")
        fit_view_bundle(
            model,
            bundle,
            s["train"],
            mode=mode,
            view=View.parse(view, roi),
            threads=threads,
            progress=False,
            **(fit_kwargs or {}),
        )
        use_bundle = bundle
    t_fit = time.perf_counter() - t0
    det = Detector.load(use_bundle, threads=threads)
    maps_ok = det.has_maps
    scores: Dict[str, List[float]] = {}
    per_signal: Dict[str, Dict[str, List[float]]] = {}
    rows = []
    t1 = time.perf_counter()
    for kind, files in s["test"].items():
        for r in det.analyze_paths(files, maps=maps_ok):
            if r.error:
                log(f"skipped {r.path}: {r.error}")
                continue
            scores.setdefault(kind, []).append(r.score)
            for sig, v in (("global", r.global_score), ("patch", r.patch_score)):
                if v is not None:
                    per_signal.setdefault(sig, {}).setdefault(kind, []).append(v)
            rows.append(
                {
                    "path": r.path,
                    "type": kind,
                    "score": r.score,
                    "global_score": r.global_score,
                    "patch_score": r.patch_score,
                    "anomalous": r.anomalous,
                    "peak": r.peak,
                    "box": r.box,
                    "map": r.map,
                }
            )
    n_scored = len(rows)
    t_score = time.perf_counter() - t1
    good = scores.get("good", [])
    res: Dict = {
        "dataset": str(root),
        "bundle": use_bundle,
        "mode": det.mode,
        "view": det.manifest.view.to_dict() if det.manifest.view is not None else None,
        "threshold": det.threshold,
        "n_train": len(s["train"]),
        "image_auroc": {},
        "tpr_at_threshold": {},
        "fpr_at_threshold": float(np.mean([x > det.threshold for x in good])),
        "seconds": {
            "fit": round(t_fit, 1),
            "score": round(t_score, 1),
            "score_per_image": round(t_score / max(1, n_scored), 4),
        },
    }
    defects = [k for k in scores if k != "good"]
    for k in defects:
        res["image_auroc"][k] = roc_auc(good, scores[k])
        res["tpr_at_threshold"][k] = float(np.mean([x > det.threshold for x in scores[k]]))
    res["image_auroc"]["all"] = roc_auc(good, [x for k in defects for x in scores[k]])
    # each signal on its own (the decision combines them in mode both)
    res["image_auroc_by_signal"] = {
        sig: {k: roc_auc(v["good"], v[k]) for k in defects if k in v}
        for sig, v in per_signal.items()
        if "good" in v
    }
    with_mask = [r for r in rows if r["type"] == "good" or s["masks"].get(r["path"])]
    if maps_ok and any(s["masks"].get(r["path"]) for r in rows):
        mp = [r["map"] for r in with_mask]
        mk = [_mask(s["masks"].get(r["path"]), r["map"].shape) for r in with_mask]
        res["pixel_auroc"] = pixel_auc(mp, mk)
        res["pro"] = aupro(mp, mk)
        res["pixel_auroc_by_type"] = {}
        for k in defects:
            sel = [i for i, r in enumerate(with_mask) if r["type"] in ("good", k)]
            if any(mk[i].any() for i in sel):
                res["pixel_auroc_by_type"][k] = pixel_auc(
                    [mp[i] for i in sel], [mk[i] for i in sel]
                )
        hit = [r for r, m in zip(with_mask, mk) if m.any()]
        res["peak_in_mask"] = (
            float(
                np.mean(
                    [m[r["peak"][1], r["peak"][0]] > 0 for r, m in zip(with_mask, mk) if m.any()]
                )
            )
            if hit
            else None
        )
    if plots:
        res["plots"] = _plots(Path(plots), res, scores, rows, det)
    for r in rows:
        r.pop("map", None)
    res["results"] = rows
    if tmp is not None:
        tmp.cleanup()
    return res


def _plots(out: Path, res: Dict, scores, rows, det) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dn2.runtime.heatmap import overlay

    out.mkdir(parents=True, exist_ok=True)
    good = np.asarray(scores["good"])
    lo = 0.5 / max(len(good), 2)  # the smallest FPR the test set can show
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k in [k for k in scores if k != "good"]:
        pts = roc_points(good, scores[k])
        ax.plot(
            np.maximum(pts["fpr"], lo), pts["tpr"], label=f"{k} (AUROC {res['image_auroc'][k]:.3f})"
        )
        fp = float(np.mean(good > det.threshold))
        tp = float(np.mean(np.asarray(scores[k]) > det.threshold))
        ax.plot([max(fp, lo)], [tp], "o", color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlim(lo * 0.8, 1)
    ax.set_xlabel("false-positive rate (log)")
    ax.set_ylabel("true-positive rate")
    ax.set_title(f"image ROC, mode {res['mode']} (dots: operating point)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    roc = out / "roc.png"
    fig.tight_layout()
    fig.savefig(roc, dpi=110)
    plt.close(fig)
    files = [str(roc)]
    misses = sorted((r for r in rows if r["type"] != "good"), key=lambda r: r["score"])[:N_THUMBS]
    alarms = sorted((r for r in rows if r["type"] == "good"), key=lambda r: -r["score"])[:N_THUMBS]
    for tag, sel in (("miss", misses), ("false_alarm", alarms)):
        for i, r in enumerate(sel):
            img = read_image(r["path"])
            if r["map"] is not None:
                img = overlay(img, r["map"], det.view_scorer.pixel_threshold, r["peak"], r["box"])
            p = out / f"{tag}_{i}_{r['type']}_{Path(r['path']).stem}.png"
            cv2.imwrite(str(p), img)
            files.append(str(p))
    return files


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.eval.folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir")
    p.add_argument("--model")
    p.add_argument("--bundle", help="write the fitted bundle here (default: a temp folder)")
    p.add_argument("--use-bundle", help="score with this bundle instead of fitting")
    p.add_argument("--mode", default="both", choices=("global", "patch", "both"))
    p.add_argument("--view", default="crop")
    p.add_argument("--roi", default=None)
    p.add_argument("--patch-bank", type=int, default=None)
    p.add_argument("--patch-topk", type=int, default=None)
    p.add_argument("--patch-weights", choices=("blocks", "none"), default=None)
    p.add_argument("--patch-cell-step", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", dest="json_out")
    p.add_argument("--plots")
    a = p.parse_args(argv)
    kw = {}
    if a.patch_bank:
        kw["bank_size"] = a.patch_bank
    if a.patch_weights:
        kw["block_weights"] = a.patch_weights == "blocks"
    if a.patch_cell_step:
        kw["cell_step"] = a.patch_cell_step
    if a.patch_topk:
        kw.update(topk=a.patch_topk, reduction="max" if a.patch_topk == 1 else "topk")
    try:
        res = evaluate_folder(
            a.dir, a.model, a.bundle, a.use_bundle, a.mode, a.view, a.roi, a.threads, a.plots, kw
        )
    except Dn2Error as exc:
        print(f"folder_eval: error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in res.items() if k != "results"}
    print(json.dumps(summary, indent=1))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
