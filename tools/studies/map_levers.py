"""What moves the anomaly map's pixel ROC-AUC: the smoothing sigma, read from one scoring pass.

Every test image of a ``Folder``-layout set with masks (``python -m dn2.tools.eval.locset``)
goes once through a fitted patch / both bundle's view and patch bank; its cell grids are then
put back on the frame (``dn2.runtime.patchscore.frame_map``: bilinear onto the source
rectangle, then a Gaussian) once per ``--sigmas`` value (model-input pixels; the bundle's own
is 4), and each map set is scored: pixel ROC-AUC overall and per defect type, and PRO. The
same pass keeps each image's raw global and patch score (``--json``'s ``results``, the input of
``python -m dn2.tools.studies.combine_rules``).

``--prune R`` scores with the pruned patch kNN's sub-bank of R rows instead of the bundle's own
setting (0: every cell exact), ``--cell-step S`` with the sub-grid patch kNN of step S
(``dn2.runtime.patchscore.subgrid_sq``; 1: every cell exact), to measure what either does to
the maps and the image scores. A set without masks gives the image scores only.

    python -m dn2.tools.studies.map_levers DIR --bundle B [--sigmas 0 2 4 6 8] [--prune R]
        [--cell-step S] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict


def run(root: str, bundle: str, sigmas, threads=None, prune=None, step=None) -> Dict:
    from dn2.runtime.detector import Detector
    from dn2.runtime.patchscore import PatchScorer, frame_map
    from dn2.tools.eval.folder import _mask, scan
    from dn2.tools.eval.locmetrics import aupro, pixel_auc

    s = scan(Path(root))
    det = Detector.load(bundle, threads=threads)
    vs = det.view_scorer
    if vs.patch is None:
        raise ValueError(f"{bundle}: expected a bundle with the patch signal, found none")
    if prune is not None or step is not None:  # instead of the bundle's own (0 / 1: exact)
        p = vs.patch
        vs.patch = PatchScorer(
            p.bank,
            p.k,
            p.reduction,
            p.topk,
            p.sigma,
            p.prune if prune is None else prune,
            weights=p.weights,
            step=p.step if step is None else step,
        )
    kept, results = [], []  # kept: (type, cells, rects, shape, mask)
    for kind, files in s["test"].items():
        for f, it in zip(files, vs.viewer.paths(files)):
            if it.error is not None:
                continue
            g, p, cells = vs.signals(it)
            results.append({"path": f, "type": kind, "global_score": g, "patch_score": p})
            if kind == "good" or s["masks"].get(f):
                kept.append(
                    (kind, list(cells), it.rects, it.shape, _mask(s["masks"].get(f), it.shape))
                )
    out: Dict = {"images": len(kept), "bundle_sigma": vs.patch.sigma, "sigmas": {}}
    out["prune"], out["cell_step"] = vs.patch.prune, vs.patch.step
    out["results"] = results
    if not any(k[0] != "good" for k in kept):  # no masks: image scores only
        sigmas = []
    for sg in sigmas:
        maps = [
            frame_map(c, r, sh[0], sh[1], det.view_scorer.embedder.input_size, sg)
            for _, c, r, sh, _ in kept
        ]
        masks = [k[4] for k in kept]
        row = {"pixel_auroc": round(pixel_auc(maps, masks), 4), "pro": round(aupro(maps, masks), 4)}
        for kind in sorted({k[0] for k in kept} - {"good"}):
            sel = [i for i, k in enumerate(kept) if k[0] in ("good", kind)]
            row[f"pixel_auroc_{kind}"] = round(
                pixel_auc([maps[i] for i in sel], [masks[i] for i in sel]), 4
            )
        out["sigmas"][str(sg)] = row
        print(f"sigma {sg}: {row}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.map_levers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir")
    p.add_argument("--bundle", required=True)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0, 2, 4, 6, 8])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prune", type=int, default=None, help="sub-bank rows (0: every cell exact)")
    p.add_argument(
        "--cell-step", type=int, default=None, help="sub-grid step of the patch kNN (1: exact)"
    )
    p.add_argument("--json")
    a = p.parse_args(argv)
    try:
        res = run(a.dir, a.bundle, a.sigmas, a.threads, a.prune, a.cell_step)
    except ValueError as exc:
        print(f"map_levers: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in res.items() if k != "results"}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
