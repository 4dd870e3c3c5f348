"""How much do numpy's spinning BLAS threads slow the next onnxruntime run?

    python -m dn2.tools.bench.blas_spin MODEL.onnx IMAGE... [--threads 2] [--bank 5000] [--reps 3]

One loop per variant, batch 1, the runtime's own parts: decode (``read_image``) + prepare +
``Embedder.embed_batch`` + exact kNN against a random bank of ``--bank`` rows. Variants:

* ``blas-all-threads``: the kNN sgemm on every BLAS thread (dn2 before
  ``dn2.runtime.bank.SINGLE_THREAD_QUERIES``);
* ``blas-one-thread``: dn2's default, small queries on one BLAS thread;
* ``no-knn``: the loop without the kNN step (the model's time with nothing spinning).

Prints the median model-stage and end-to-end ms per image of each variant; the first pass over
the images is warm-up and not counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from dn2.runtime import bank as bank_mod
from dn2.runtime.embedder import Embedder
from dn2.runtime.images import prepare, read_image

VARIANTS = ("blas-all-threads", "blas-one-thread", "no-knn")


def run_variant(variant: str, embedder: Embedder, paths: List[str], bank, reps: int) -> Dict:
    saved = bank_mod.SINGLE_THREAD_QUERIES
    bank_mod.SINGLE_THREAD_QUERIES = 0 if variant == "blas-all-threads" else saved
    model_ms, e2e_ms = [], []
    try:
        for rep in range(reps + 1):
            for p in paths:
                t0 = time.perf_counter()
                x = prepare(read_image(p), embedder.meta.resize)[None]
                t1 = time.perf_counter()
                e = embedder.embed_batch(x)
                t2 = time.perf_counter()
                if variant != "no-knn":
                    bank.search(e, 2)
                t3 = time.perf_counter()
                if rep:  # pass 0 is warm-up
                    model_ms.append((t2 - t1) * 1e3)
                    e2e_ms.append((t3 - t0) * 1e3)
    finally:
        bank_mod.SINGLE_THREAD_QUERIES = saved
    return {
        "variant": variant,
        "model_ms": round(statistics.median(model_ms), 1),
        "e2e_ms": round(statistics.median(e2e_ms), 1),
        "images": len(model_ms),
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.blas_spin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model")
    p.add_argument("images", nargs="+")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--bank", type=int, default=5000, help="bank rows (random)")
    p.add_argument("--reps", type=int, default=3, help="timed passes over the images")
    a = p.parse_args(argv)
    emb = Embedder(a.model, threads=a.threads)
    exact = bank_mod.ExactBank(emb.meta.dim)
    exact.add(np.random.default_rng(0).standard_normal((a.bank, emb.meta.dim), np.float32))
    print(
        f"{a.model}: {len(a.images)} images, batch 1, {a.threads} onnxruntime threads, "
        f"exact bank {a.bank} x {emb.meta.dim}"
    )
    print("| variant | model ms/img (median) | end-to-end ms/img (median) |\n|---|---|---|")
    for v in VARIANTS:
        r = run_variant(v, emb, a.images, exact, a.reps)
        print(f"| {v} | {r['model_ms']} | {r['e2e_ms']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
