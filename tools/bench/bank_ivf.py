"""An inverted-file first stage for the two-stage bank, measured against the exact truth.

    python -m dn2.tools.bench.bank_ivf --workdir W --n 1000000 --dim 512 --project 128 \\
        --lists 1000 --nprobe 2 4 8 --rerank 32 [--queries 1000]

Reads what ``python -m dn2.tools.bench.bank_scale --n N --dim D --workdir W`` left in ``W``
(the memory-mapped bank rows and the exact top-2 of its queries). Stage 1: the rows projected
on their first ``--project`` principal axes (``dn2.runtime.bank_projected.fit_projection``, the
product's projection), k-means lists in that space (faiss, 10 iterations on a seeded sample of
50 rows per list, then every row assigned), stored list by list; a query scans the
``--nprobe`` lists with the nearest centres (numpy) and keeps the ``--rerank`` nearest
projected rows. Stage 2 as in ``ProjectedHnswBank``: exact squared L2 on the full rows.
Single queries (batch 1, one thread), so the latency compares with bank_scale's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dn2.tools.bench.bank_scale import _load, _mem, recall_at, say
from dn2.tools.bench.bank_scale_proj import project_rows


def build_lists(y: np.ndarray, lists: int, seed: int = 0):
    """(centres [C, d], row ids list by list [N], offsets [C + 1], projected rows in list order)."""
    import faiss  # the tools extra

    rng = np.random.default_rng(seed)
    sample = np.asarray(y[np.sort(rng.choice(len(y), min(len(y), 50 * lists), replace=False))])
    km = faiss.Kmeans(y.shape[1], lists, niter=10, seed=seed + 1, verbose=False)
    km.train(np.ascontiguousarray(sample, np.float32))
    assign = np.empty(len(y), np.int64)
    for i in range(0, len(y), 1 << 16):
        assign[i : i + (1 << 16)] = km.index.search(np.asarray(y[i : i + (1 << 16)]), 1)[1][:, 0]
    order = np.argsort(assign, kind="stable")
    offsets = np.searchsorted(assign[order], np.arange(lists + 1))
    return km.centroids.copy(), order, offsets, np.ascontiguousarray(y[order])


def search_one(q, qy, x, proj_rows, centres, cnorm, order, offsets, nprobe, rerank, k=2):
    """One query: nearest ``nprobe`` lists, ``rerank`` projected candidates, exact top-k;
    returns (distances, ids, rows scanned)."""
    near = np.argpartition(cnorm - 2.0 * (centres @ qy), nprobe - 1)[:nprobe]
    spans = [slice(offsets[c], offsets[c + 1]) for c in near]  # lists are contiguous
    pos = np.concatenate([np.arange(s.start, s.stop) for s in spans])
    block = np.concatenate([proj_rows[s] for s in spans])
    d = np.einsum("ij,ij->i", block, block) - 2.0 * (block @ qy)  # + |qy|^2: same for all
    scanned = len(pos)
    if len(pos) > rerank:
        pos = pos[np.argpartition(d, rerank - 1)[:rerank]]
    ids = np.sort(order[pos])
    diff = np.asarray(x[ids]) - q
    full = np.einsum("ij,ij->i", diff, diff)
    best = np.argsort(full, kind="stable")[:k]
    return full[best], ids[best], scanned


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.bank_ivf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--data", default="mixture")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--project", type=int, default=128)
    p.add_argument("--lists", type=int, default=1000)
    p.add_argument("--nprobe", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--rerank", type=int, nargs="+", default=[32])
    a = p.parse_args(argv)
    bank = os.path.join(a.workdir, f"bank_{a.data}_{a.n}.npy")
    truth = os.path.join(a.workdir, f"truth_{a.data}_{a.n}x{a.dim}_q{a.queries}.npz")
    for f in (bank, truth):
        if not os.path.exists(f):
            p.error(f"{f}: not found (run dn2.tools.bench.bank_scale with this --workdir first)")
    x = np.load(bank, mmap_mode="r")
    with np.load(truth, allow_pickle=False) as z:
        q, ed, ei = z["q"], z["d"], z["i"]
    proj, y = project_rows(a.workdir, x, a.project, f"{a.data}_{a.n}x{x.shape[1]}")
    t = time.perf_counter()
    centres, order, offsets, proj_rows = build_lists(y, a.lists)
    build = time.perf_counter() - t
    sizes = np.diff(offsets)
    say(
        f"{a.lists} lists in {build:.1f} s (rows per list: median {np.median(sizes):.0f}, "
        f"max {sizes.max()}); {_mem()}"
    )
    cnorm = np.einsum("ij,ij->i", centres, centres)
    qy = ((q - proj[0]) @ proj[1:].T).astype(np.float32)
    for nprobe in a.nprobe:
        for rerank in a.rerank:
            run = lambda j: search_one(  # noqa: E731
                q[j], qy[j], x, proj_rows, centres, cnorm, order, offsets, nprobe, rerank
            )
            for j in range(20):  # warm-up
                run(j)
            ids = np.empty((len(q), 2), np.int64)
            dist = np.empty((len(q), 2), np.float32)
            scanned = 0
            t = time.perf_counter()
            for j in range(len(q)):
                dist[j], ids[j], s = run(j)
                scanned += s
            ms = (time.perf_counter() - t) / len(q) * 1e3
            ratio = dist.mean(1) / np.maximum(ed.mean(1), 1e-12)
            row = {
                "n": a.n,
                "dim": int(x.shape[1]),
                "project": a.project,
                "lists": a.lists,
                "lists_build_s": round(build, 1),
                "nprobe": nprobe,
                "rerank": rerank,
                "rows_scanned": round(scanned / len(q)),
                "latency_ms": round(ms, 3),
                "recall@2": round(recall_at(ei, ids), 4),
                "worst_score_ratio": round(float(ratio.max()), 4),
                "load": _load(),
                **_mem(),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
