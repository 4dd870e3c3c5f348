"""Patch bank compression measured, and patch-mode speed against global mode (same run).

``compare``: real textile patch features (``--train`` nominal images through the model's
``patches`` output); banks of ``--size`` rows built by

* ``coreset-stream``: dn2's fit (``StreamingCoreset``: <= 512 rows per image, pool coreset),
* ``coreset-full``: one greedy coreset over all patches in RAM (PatchCore's),
* ``random``: a uniform random subsample,
* ``kmeans``: faiss k-means centres (10 iterations) over all patches (``pip install dn2[kmeans]``),

each scored on ``--test`` held-out nominal vs local-defect images (ROC-AUC with the mean of
the 10 highest cells and with the max), with its build time and bank / peak bytes.

``speed``: the same images end to end (decode, view, model, kNN, map) with a global-mode and a
both-mode bundle of one model, alternating, reporting images/s and their ratio; the both-mode
bundle runs four times per round: as fitted (the defaults: the sub-grid patch kNN on one BLAS
thread), with every cell exact (``both_exact``: the default before the sub-grid kNN), with the
opt-in pruned kNN (a sub-bank of a quarter of the bank, every cell's bound from it), and on
every BLAS thread (the earlier behaviour); ``--both-threads N ...`` adds the both bundle as
fitted with N onnxruntime intra-op threads instead of ``--threads`` (a scheduling lever: the
model on fewer threads beside the kNN's). Each variant's CPU time (all threads of the
process) per image is printed beside its rate: the work, which a busy machine does not change
much, where the rates are the work scheduled on the cores. ``--size`` sets the patch bank rows
(default: the fit's).

    python -m dn2.tools.bench.patch_bank compare --model M.onnx [--train 60] [--test 60]
        [--size 4096] [--json OUT]
    python -m dn2.tools.bench.patch_bank speed --model M.onnx [--images 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _textile():
    import conformal_clip_data as ccd

    return (
        sorted(Path(ccd.nominal_dir()).glob("*.jpg")),
        sorted(Path(ccd.local_dir()).glob("*.jpg")),
    )


def _patches(emb, paths, view):
    from dn2.runtime.patchscore import patch_rows
    from dn2.runtime.viewembed import ViewEmbedder

    ve = ViewEmbedder(emb, view)
    return [patch_rows(it.patches).reshape(-1, it.patches.shape[1]) for it in ve.paths(paths)]


def compare(a) -> dict:
    from dn2.runtime.bank import build_bank
    from dn2.runtime.coreset import StreamingCoreset, greedy_coreset
    from dn2.runtime.embedder import Embedder
    from dn2.runtime.patchscore import cell_scores, reduce_cells
    from dn2.runtime.threshold import roc_auc
    from dn2.runtime.viewembed import ViewEmbedder
    from dn2.runtime.views import View

    noms, locs = _textile()
    emb = Embedder(a.model, threads=a.threads)
    view = View.parse(a.view)
    t0 = time.perf_counter()
    train = _patches(emb, noms[: a.train], view)
    ve = ViewEmbedder(emb, view)
    test = {
        k: [it.patches for it in ve.paths(p)]
        for k, p in (("good", noms[500 : 500 + a.test]), ("local", locs[: a.test]))
    }
    t_embed = time.perf_counter() - t0
    allp = np.concatenate(train)
    n = a.size or 4096
    out = {
        "train_images": a.train,
        "test_images": a.test,
        "patches": int(len(allp)),
        "dim": int(allp.shape[1]),
        "size": n,
        "embed_s": round(t_embed, 1),
        "banks": {},
    }

    def stream():
        pool = StreamingCoreset(allp.shape[1], min(512, len(train[0])), 4 * n, seed=0)
        for r in train:
            pool.add_image(r)
        return pool.result(n), 4 * n * allp.shape[1] * 4

    def full():
        return allp[np.sort(greedy_coreset(allp, n))], allp.nbytes

    def rand():
        return allp[np.random.default_rng(0).choice(len(allp), n, replace=False)], allp.nbytes

    def km():
        import faiss

        k = faiss.Kmeans(allp.shape[1], n, niter=10, seed=0, verbose=False)
        k.train(np.ascontiguousarray(allp))
        return k.centroids.astype(np.float32), allp.nbytes

    for name, fn in (
        ("coreset-stream", stream),
        ("coreset-full", full),
        ("random", rand),
        ("kmeans", km),
    ):
        try:
            t = time.perf_counter()
            rows, peak = fn()
            build = time.perf_counter() - t
        except ImportError as exc:
            out["banks"][name] = {"skipped": str(exc)}
            continue
        bank = build_bank(rows, "exact")
        t = time.perf_counter()
        cells = {k: [cell_scores(bank, p) for p in v] for k, v in test.items()}
        q = (time.perf_counter() - t) / (2 * a.test)
        res = {
            "build_s": round(build, 2),
            "bank_bytes": int(rows.nbytes),
            "peak_patch_bytes": int(peak),
            "query_s_per_image": round(q, 4),
        }
        for red, tk in (("top10", 10), ("max", 1)):
            s = {
                k: np.concatenate([reduce_cells(c[None], "topk", tk) for c in v])
                for k, v in cells.items()
            }
            res[f"auroc_local_{red}"] = roc_auc(s["good"], s["local"])
        out["banks"][name] = res
        print(f"{name}: {res}", file=sys.stderr, flush=True)
    return out


def speed(a) -> dict:
    from dn2.runtime.detector import Detector
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.views import View

    noms, _ = _textile()
    imgs = [str(p) for p in noms[600 : 600 + a.images]]
    out = {"images": a.images, "view": a.view, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="dn2-speed-") as tmp:
        dets = {}
        for mode in ("global", "both"):
            fit_view_bundle(
                a.model,
                f"{tmp}/{mode}",
                noms[: a.train],
                mode=mode,
                view=View.parse(a.view),
                **({"bank_size": a.size} if a.size else {}),
                threads=a.threads,
                progress=False,
            )
            dets[mode] = Detector.load(f"{tmp}/{mode}", threads=a.threads)
            dets[mode].analyze_paths(imgs[:2])  # warm-up
        for th in a.both_threads:  # the both bundle with other onnxruntime intra-op threads
            dets[f"both_ort{th}"] = Detector.load(f"{tmp}/both", threads=th)
            dets[f"both_ort{th}"].analyze_paths(imgs[:2])
        patch = dets["both"].view_scorer.patch
        prune, step = patch.prune, patch.step
        out["cell_step"] = step
        variants = (  # name, bundle, patch kNN on one BLAS thread, sub-bank rows, grid step
            ("global", "global", True, prune, step),
            ("both", "both", True, prune, step),
            ("both_exact", "both", True, 0, 1),
            ("both_pruned", "both", True, patch.bank.n // 4, 1),
            ("both_blas_all", "both", False, prune, step),
            *((f"both_ort{th}", f"both_ort{th}", True, prune, step) for th in a.both_threads),
        )
        for _ in range(a.rounds):
            r = {}
            for name, mode, one, rows, st in variants:
                if mode == "both":
                    patch.one_blas_thread, patch.prune, patch.step = one, rows, st
                t, c = time.perf_counter(), time.process_time()
                dets[mode].analyze_paths(imgs, maps=mode != "global")
                r[name] = a.images / (time.perf_counter() - t)
                r[f"cpu_ms_{name}"] = 1000 * (time.process_time() - c) / a.images
            patch.one_blas_thread, patch.prune, patch.step = True, prune, step
            for name, *_ in variants[1:]:
                r[f"ratio_{name}"] = r[name] / r["global"]
            out["rounds"].append(r)
            print(
                "images/s "
                + ", ".join(f"{v[0]} {r[v[0]]:.2f}" for v in variants)
                + " | ratio to global: "
                + ", ".join(f"{v[0]} {r['ratio_' + v[0]]:.2f}" for v in variants[1:])
                + " | CPU ms/image: "
                + ", ".join(f"{v[0]} {r['cpu_ms_' + v[0]]:.1f}" for v in variants),
                file=sys.stderr,
                flush=True,
            )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.patch_bank",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", choices=("compare", "speed"))
    p.add_argument("--model", required=True)
    p.add_argument("--view", default="full")
    p.add_argument("--train", type=int, default=60)
    p.add_argument("--test", type=int, default=60)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--images", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--both-threads",
        type=int,
        nargs="*",
        default=[],
        help="speed: also the both bundle with these onnxruntime intra-op threads",
    )
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = compare(a) if a.what == "compare" else speed(a)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
