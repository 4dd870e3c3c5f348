"""A/B of the runtime pipeline's decode settings: overlapped end to end over the bare model.

    python -m dn2.tools.bench.overlap_ab MODEL.onnx --frames DIR [--n 16] [--batch 1 8]
        [--threads 2] [--rounds 6] [--json OUT]

The bench's dn2 pipeline (``dn2.tools.bench.dn2pipe``: the runtime's decode, resize, model
and exact kNN over a 5000 x 2048 bank) through ``dn2.runtime.pipeline.overlapped``, with:

* ``default``: as the runtime runs it (decode pool of 2 at the runtime's priority setting,
  ``DN2_DECODE_NICE`` or else ``DECODE_NICE``; OpenCV at one thread meanwhile);
* ``nice0``: the decode pool at the caller's priority;
* ``idle``: the decode pool at SCHED_IDLE (a sliver of CPU while anything else wants a core);
* ``tail19``: the kNN / decision thread at nice 19 too;
* ``opencv-pool``: OpenCV's own pool left at ``--threads`` threads inside the decode pool;
* ``workers1``: a decode pool of one thread.

Each round runs every variant once (the order reversed every other round): one overlapped pass
over the ``--n`` frames, then the model alone on the same prepared batches; the variant's
figure is the median over rounds of that round's overlapped / bare ratio (all printed), so a
load change between rounds does not favour one variant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

VARIANTS = {
    "default": {},
    "nice0": {"decode_nice": 0},
    "idle": {"decode_nice": "idle"},
    "tail19": {"tail_nice": 19},
    "opencv-pool": {"opencv_one_thread": False},
    "workers1": {"workers": 1},
}


def one_round(pipe, paths: List[str], prepared: List[np.ndarray], batch: int, variant) -> float:
    """Overlapped img/s over bare-model img/s for one pass of ``variant``."""
    from dn2.runtime.pipeline import overlapped

    t0 = time.perf_counter()
    n = 0
    for b in overlapped(
        paths,
        pipe.load_one,
        pipe.model,
        tail=lambda e: pipe.decide(pipe.knn(e)),
        batch=batch,
        **VARIANTS[variant],
    ):
        n += len(b.output)
    ovl = time.perf_counter() - t0
    t0 = time.perf_counter()
    for x in prepared:
        pipe.model(x)
    bare = time.perf_counter() - t0
    if n != len(paths):
        raise RuntimeError(f"{len(paths)} frames in, {n} decisions out")
    return bare / ovl


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dn2.tools.bench.overlap_ab", description=__doc__)
    p.add_argument("model")
    p.add_argument("--frames", required=True, help="a folder of images (the first --n used)")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", metavar="OUT")
    a = p.parse_args(argv)
    from dn2.runtime.images import find_images
    from dn2.runtime.modelmeta import read_model_meta

    from .dn2pipe import Dn2Pipeline
    from .run import make_bank

    paths = find_images([a.frames])[0][: a.n]
    if len(paths) < max(a.batch) or a.rounds < 1:
        p.error(f"--frames: expected at least {max(a.batch)} images, found {len(paths)}")
    bank = make_bank(5000, read_model_meta(a.model).dim)
    thr = float(np.median(bank.sum(1)))
    pipe = Dn2Pipeline(a.model, "model", bank, 2, thr, a.threads, batch_size=max(a.batch))
    print(f"load avg at start {[round(v, 2) for v in os.getloadavg()]}", flush=True)
    out: Dict[str, Dict[str, object]] = {}
    for b in a.batch:
        prepared = [
            np.stack([pipe.load_one(q) for q in paths[i : i + b]]) for i in range(0, len(paths), b)
        ]
        one_round(pipe, paths, prepared, b, a.variants[0])  # warm-up, not counted
        got: Dict[str, List[float]] = {v: [] for v in a.variants}
        for r in range(a.rounds):
            for v in a.variants if r % 2 == 0 else a.variants[::-1]:
                got[v].append(round(one_round(pipe, paths, prepared, b, v), 4))
        for v in a.variants:
            med = float(np.median(got[v]))
            out[f"{v} b{b}"] = {"variant": v, "batch": b, "median": round(med, 4), "rounds": got[v]}
            print(f"{v} batch {b}: overlapped / bare median {med:.3f}, per round {got[v]}")
    print(f"load avg at end {[round(v, 2) for v in os.getloadavg()]}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
