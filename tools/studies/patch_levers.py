"""What moves the patch signal on the textile set: bank size, k, top-k reduction, channels.

The textile images (PyPI conformal-clip-data: nominal 1..train -> bank, nominal 501..600 ->
held-out good, local / global 1..100 -> defects) go through the model's ``patches`` output
once (full view) and are cached as float16 (``--cache``); then, for every bank size, feature
transform and k of the grid, the bank is built the way the fit builds it (streaming greedy
coreset, <= 512 patches per image) and every test image's cells are scored once; every top-k
reduction is read from the same cells. Transforms, all fitted on normal patches only:
``none``, ``pca:D`` (principal axes of the bank rows, D dims), ``rand:D`` (Gaussian random
projection), ``first:C`` / ``last:C`` (the first / last C channels: for Lite0 40 = the
stride-8 block, 112 = the stride-16 block), ``blocks:C`` (the first C channels and the rest
scaled to the same total variance over the bank rows: ``dn2.runtime.patchweights``' rule, the
fit's default, which also selects its coreset in the weighted space; here the rows are
selected unweighted), ``scale:C:W`` (the first C channels times W). Query time per image is
printed beside each row (the machine's load applies: read it as a ratio).

    python -m dn2.tools.studies.patch_levers --model M.onnx [--train 200] [--sizes 4096 16384]
        [--transforms none pca:64] [--k 1] [--topk 1 3 10 30] [--view full|tiles=RxC]
        [--with-global] [--cache DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

SPLITS = (("train", "nominal", 0), ("good", "nominal", 500), ("local", "local", 0))


def _files(n_train: int, n_test: int, with_global: bool) -> Dict[str, List[Path]]:
    import conformal_clip_data as ccd

    dirs = {"nominal": ccd.nominal_dir(), "local": ccd.local_dir(), "global": ccd.global_dir()}
    splits = SPLITS + ((("global", "global", 0),) if with_global else ())
    out = {}
    for name, src, start in splits:
        n = n_train if name == "train" else n_test
        out[name] = sorted(Path(dirs[src]).glob("*.jpg"))[start : start + n]
    return out


def embed_cached(
    model: str, files: Dict[str, List[Path]], cache: Path, threads: int, view: str = "full"
):
    """{split: float16 [N, C, h, w]} through ``view`` (``full``: [N, C, h, w]; tiles: the
    R x C tiles' cells side by side, [N, C, h, R*C*w]), cached per model, view and split size."""
    from dn2.runtime.embedder import Embedder
    from dn2.runtime.viewembed import ViewEmbedder
    from dn2.runtime.views import View

    cache.mkdir(parents=True, exist_ok=True)
    out, ve = {}, None
    for split, paths in files.items():
        tag = "" if view == "full" else "_" + view.replace("=", "")
        f = cache / f"{Path(model).stem}{tag}_{split}_{len(paths)}.npy"
        if not f.exists():
            if ve is None:
                ve = ViewEmbedder(Embedder(model, threads=threads), View.parse(view))
            arr = np.stack(
                [np.concatenate(list(it.patches), -1).astype(np.float16) for it in ve.paths(paths)]
            )
            np.save(f, arr)
        out[split] = np.load(f, allow_pickle=False)
    return out


def transform(kind: str, bank: np.ndarray, seed: int = 0):
    """(function [M, C] -> [M, D], D) fitted on the normal ``bank`` rows."""
    if kind == "none":
        return (lambda x: x), bank.shape[1]
    name, *args = kind.split(":")
    if name in ("blocks", "scale"):
        c = int(args[0])
        if name == "blocks":
            from dn2.runtime.patchweights import BlockStats

            st = BlockStats([c, bank.shape[1] - c])
            st.add(bank)
            a, b = st.weights()
        else:
            a, b = float(args[1]), 1.0
        w = np.r_[np.full(c, a), np.full(bank.shape[1] - c, b)].astype(np.float32)
        return (lambda x: x * w), bank.shape[1]
    d = int(args[0])
    if name == "first":
        return (lambda x: np.ascontiguousarray(x[:, :d])), d
    if name == "last":
        return (lambda x: np.ascontiguousarray(x[:, -d:])), d
    if name == "rand":
        r = np.random.default_rng(seed).standard_normal((bank.shape[1], d)) / np.sqrt(d)
        r = r.astype(np.float32)
        return (lambda x: x @ r), d
    if name == "pca":
        mu = bank.mean(axis=0)
        _, _, vt = np.linalg.svd(bank - mu, full_matrices=False)
        p = np.ascontiguousarray(vt[:d].T.astype(np.float32))
        return (lambda x: (x - mu) @ p), d
    raise ValueError(
        f"transform: expected none|pca:D|rand:D|first:C|last:C|blocks:C|scale:C:W, found {kind!r}"
    )


def run(a) -> Dict:
    from dn2.runtime.bank import build_bank
    from dn2.runtime.coreset import StreamingCoreset
    from dn2.runtime.patchscore import cell_scores, patch_rows, reduce_cells
    from dn2.runtime.threshold import roc_auc

    files = _files(a.train, a.test, a.with_global)
    t0 = time.perf_counter()
    feats = embed_cached(a.model, files, Path(a.cache), a.threads, a.view)
    out: Dict = {"model": a.model, "view": a.view, "train": a.train, "test": a.test, "rows": []}
    out["embed_s"] = round(time.perf_counter() - t0, 1)
    train = patch_rows(feats["train"].astype(np.float32))
    grid = feats["good"].shape[2:]
    for size in a.sizes:
        t = time.perf_counter()
        pool = StreamingCoreset(train.shape[2], min(512, train.shape[1]), 4 * size, seed=0)
        for r in train:
            pool.add_image(r)
        bank_rows = pool.result(size)
        t_bank = time.perf_counter() - t
        for kind in a.transforms:
            fn, d = transform(kind, bank_rows)
            bank = build_bank(np.ascontiguousarray(fn(bank_rows), np.float32), "exact")
            for k in a.k:
                cells, tq = {}, 0.0
                for split in [s for s in feats if s != "train"]:
                    x = feats[split].astype(np.float32)
                    rows = patch_rows(x).reshape(-1, x.shape[1])
                    t = time.perf_counter()
                    z = fn(rows).reshape(len(x), -1, d).transpose(0, 2, 1)[..., None]
                    c = cell_scores(bank, z, k)  # [N, h*w, 1]
                    tq += time.perf_counter() - t
                    cells[split] = c.reshape(len(x), *grid)
                n_q = sum(len(v) for v in cells.values())
                for tk in a.topk:
                    s = {sp: reduce_cells(c, "topk", tk) for sp, c in cells.items()}
                    row = {"size": size, "transform": kind, "dim": d, "k": k, "topk": tk}
                    for sp in s:
                        if sp != "good":
                            row[f"auroc_{sp}"] = round(roc_auc(s["good"], s[sp]), 4)
                    row["query_ms_per_image"] = round(1000 * tq / n_q, 1)
                    row["bank_s"] = round(t_bank, 1)
                    out["rows"].append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.patch_levers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--with-global", action="store_true")
    p.add_argument("--view", default="full", help="full or tiles=RxC (the fit's views)")
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--transforms", nargs="+", default=["none"])
    p.add_argument("--k", type=int, nargs="+", default=[1])
    p.add_argument("--topk", type=int, nargs="+", default=[1, 3, 10, 30])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default="patch-cache")
    p.add_argument("--json")
    a = p.parse_args(argv)
    try:
        res = run(a)
    except ValueError as exc:
        print(f"patch_levers: error: {exc}", file=sys.stderr)
        return 2
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
