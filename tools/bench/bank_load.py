"""A saved million-row two-stage bank loaded the way a bundle loads it, then queried.

    python -m dn2.tools.bench.bank_load --workdir W --n 1000000 --dim 512 --project 128 \\
        --graph W/hnsw_mixture_1000000x512p128_M48_efc200.bin --engine faiss \\
        --efs 96 128 192 --rerank 16 64

Reads what ``python -m dn2.tools.bench.bank_scale --project D --save-index`` left in ``W`` (the
memory-mapped rows, the exact top-2 of its queries, the saved graph). Makes a bank directory
(``--bankdir``, default ``W/bank_dir``): ``bank.proj.npy`` (the projection the graph was built
on: ``fit_projection(rows, D, seed=0)``, as bank_scale fits it) and links to the graph and the
rows as ``bank.bin`` / ``bank.rows.npy``; then ``dn2.runtime.bank.load_bank`` with the manifest
parameters a fit would record (the whole graph file checked, then handed to the engine), and
single queries through ``ProjectedHnswBank.search`` (``--repeats`` passes, the fastest
reported, all listed). Prints one JSON row per (ef, rerank): load
seconds, the process's anonymous memory after the load (the engine's copy of the graph; the
rows stay in the page cache), recall@2 against the exact truth, wall and CPU ms per query.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dn2.tools.bench.bank_scale import _load, _mem, say
from dn2.tools.bench.bank_scale_proj import query_two_stage


def bank_dir(path: str, rows_file: str, graph: str, x: np.ndarray, project: int) -> str:
    """``path`` with bank.bin, bank.proj.npy and bank.rows.npy (links to the saved files)."""
    from dn2.runtime.bank_projected import fit_projection, sibling

    os.makedirs(path, exist_ok=True)
    target = os.path.join(path, "bank.bin")
    for link, src in ((target, graph), (str(sibling(target, "rows")), rows_file)):
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.abspath(src), link)
    proj = str(sibling(target, "proj"))
    if not os.path.exists(proj):
        np.save(proj, fit_projection(x, project, seed=0), allow_pickle=False)
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.bank_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--data", default="mixture")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--project", type=int, default=128)
    p.add_argument("--graph", required=True, help="a graph bank_scale --save-index wrote")
    p.add_argument("--bankdir", default=None)
    p.add_argument("--engine", choices=("hnswlib", "faiss"), default="faiss")
    p.add_argument("--efs", type=int, nargs="+", default=[128])
    p.add_argument("--rerank", type=int, nargs="+", default=[64])
    p.add_argument("--repeats", type=int, default=3, help="passes over the queries; fastest kept")
    p.add_argument(
        "--order-min-rows",
        type=int,
        default=None,
        help="faiss: renumber nodes by cluster from this many rows (bank_faiss.ORDER_MIN_ROWS)",
    )
    a = p.parse_args(argv)
    from dn2.runtime.bank import load_bank
    from dn2.runtime.bankfile import hnsw_header

    rows_file = os.path.join(a.workdir, f"bank_{a.data}_{a.n}.npy")
    truth = os.path.join(a.workdir, f"truth_{a.data}_{a.n}x{a.dim}_q{a.queries}.npz")
    for f in (rows_file, truth, a.graph):
        if not os.path.exists(f):
            p.error(f"{f}: not found (run dn2.tools.bench.bank_scale --save-index first)")
    x = np.load(rows_file, mmap_mode="r")
    with np.load(truth, allow_pickle=False) as z:
        q, ed, ei = z["q"], z["d"], z["i"]
    target = bank_dir(
        a.bankdir or os.path.join(a.workdir, "bank_dir"), rows_file, a.graph, x, a.project
    )
    h = hnsw_header(a.graph)
    params = {"kind": "hnsw", "n": a.n, "dim": a.dim, "M": h["M"], "ef": max(a.efs)}
    params.update(ef_construction=h["ef_construction"], project=a.project, engine=a.engine)
    params["rerank"] = max(a.rerank)
    if a.order_min_rows is not None:
        from dn2.runtime import bank_faiss

        bank_faiss.ORDER_MIN_ROWS = a.order_min_rows
    anon0 = _mem().get("RssAnon", 0.0)
    t = time.perf_counter()
    bank = load_bank(target, params)
    load_s = time.perf_counter() - t
    mem = _mem()
    say(f"loaded ({a.engine}) in {load_s:.1f} s; {mem}")
    for r in query_two_stage(bank, q, ed, ei, a.efs, a.rerank, repeats=a.repeats):
        row = {"n": a.n, "dim": a.dim, "project": a.project, "engine": a.engine, "M": h["M"]}
        if a.engine == "faiss":
            from dn2.runtime import bank_faiss

            row["cluster_order"] = a.n >= bank_faiss.ORDER_MIN_ROWS
        row.update(ef_construction=h["ef_construction"], load_s=round(load_s, 1))
        row["engine_anon_gib"] = round(mem.get("RssAnon", 0.0) - anon0, 2)
        row.update(r, load=_load())
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
