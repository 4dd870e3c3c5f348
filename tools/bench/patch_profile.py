"""Where a both-mode image's time goes: each stage of the runtime's path timed on its own.

A both-mode bundle is fitted on ``--train`` textile nominal images (PyPI conformal-clip-data,
full view, the fit's defaults) or ``--bundle`` is used; then, on held-out nominal images, the
best of ``--reps`` runs of each stage: decode, view inputs, the model (embeddings + patches),
the patch kNN (``PatchScorer.cells``), the frame map (stitch + Gaussian), peak and box, the
whole per-image scoring (``ViewScorer._one``), and the end-to-end ``Detector.analyze_paths``
per image (decode, model and scoring overlapped).

    python -m dn2.tools.bench.patch_profile --model M.onnx [--train 20] [--bundle B]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def run(a) -> dict:
    import conformal_clip_data as ccd

    from dn2.runtime.detector import Detector
    from dn2.runtime.images import read_image
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.patchscore import frame_map, peak_and_box
    from dn2.runtime.views import View, view_inputs

    noms = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="dn2-profile-") as tmp:
        bundle = a.bundle
        if bundle is None:
            bundle = f"{tmp}/both"
            fit_view_bundle(
                a.model,
                bundle,
                noms[: a.train],
                mode="both",
                view=View("full"),
                threads=a.threads,
                progress=False,
            )
        det = Detector.load(bundle, threads=a.threads)
        vs = det.view_scorer
        imgs = [str(p) for p in noms[600 : 600 + a.images]]
        it = next(iter(vs.viewer.paths(imgs[:1])))
        emb, ms = vs.embedder, {}

        def best(name, fn, reps=a.reps):
            b = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                r = fn()
                b = min(b, time.perf_counter() - t)
            ms[name] = round(1000 * b, 2)
            return r

        img = best("decode", lambda: read_image(imgs[0]))
        x, _ = best("view inputs", lambda: view_inputs(img, vs.view, emb.rule))
        best("model (embeddings + patches)", lambda: emb.embed_patches_batch(x))
        cells = best("patch kNN", lambda: vs.patch.cells(it.patches))
        h, w = it.shape
        fm = best(
            "frame map",
            lambda: frame_map(list(cells), it.rects, h, w, emb.input_size, vs.patch.sigma),
        )
        best("peak and box", lambda: peak_and_box(fm, vs.pixel_threshold))
        best("scoring one image (signals, map, combine)", lambda: vs._one(it, True))
        best("analyze_paths, all images", lambda: det.analyze_paths(imgs), reps=2)
        ms["analyze_paths per image"] = round(ms.pop("analyze_paths, all images") / len(imgs), 2)
        out = {
            "frame": list(it.shape),
            "patches": list(it.patches.shape),
            "bank_rows": int(vs.patch.bank.n),
            "ms": ms,
        }
    print(f"ms per stage: {ms}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.patch_profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--bundle")
    p.add_argument("--train", type=int, default=20)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    print(json.dumps(run(a), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
