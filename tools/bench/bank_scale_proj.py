"""The two-stage bank in ``python -m dn2.tools.bench.bank_scale --project D``: the rows
projected for the graph, and single-query recall / latency through the product's own
``dn2.runtime.bank_projected.ProjectedHnswBank.search``."""

from __future__ import annotations

import os
import time

import numpy as np

from dn2.tools.bench.bank_scale import CHUNK, _load, recall_at, say


def project_rows(workdir: str, x: np.ndarray, project: int, tag: str):
    """(projection [D+1, dim], the projected rows memory-mapped): axes fitted by the runtime's
    ``fit_projection`` (seeded sample), rows projected chunk by chunk into ``--workdir``."""
    from dn2.runtime.bank_projected import fit_projection

    t = time.perf_counter()
    proj = fit_projection(x, project, seed=0)
    path = os.path.join(workdir, f"proj_{tag}_p{project}.npy")
    y = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(x), project))
    for i in range(0, len(x), CHUNK):
        y[i : i + CHUNK] = (np.asarray(x[i : i + CHUNK]) - proj[0]) @ proj[1:].T
    y.flush()
    del y
    say(f"projection to {project} dims fitted and applied in {time.perf_counter() - t:.1f} s")
    return proj, np.load(path, mmap_mode="r")


def query_two_stage(bank, q, exact_d, exact_i, efs, reranks, k: int = 2, repeats: int = 1):
    """Single queries (batch 1, one thread) through ``ProjectedHnswBank.search``: wall time
    per query and the querying thread's CPU time per query (what load from other processes
    inflates less: it excludes the time the thread waits for a core). With ``repeats`` > 1
    the queries run that many times; ``latency_ms`` / ``cpu_ms`` are the fastest pass (the
    one least disturbed), ``latency_runs`` all of them."""
    rows = []
    for ef in efs:
        for r in reranks:
            bank.graph.ef, bank.rerank = int(ef), int(r)
            for row in q[:20]:  # warm-up
                bank.search(row[None, :], k, threads=1)
            ids = np.empty((len(q), k), np.int64)
            dist = np.empty((len(q), k), np.float32)
            walls, cpus = [], []
            for _ in range(max(1, int(repeats))):
                t, cpu = time.perf_counter(), time.thread_time()
                for j, row in enumerate(q):
                    dist[j], ids[j] = (a[0] for a in bank.search(row[None, :], k, threads=1))
                walls.append(round((time.perf_counter() - t) / len(q) * 1e3, 3))
                cpus.append(round((time.thread_time() - cpu) / len(q) * 1e3, 3))
            single, cpu = min(walls), min(cpus)
            t = time.perf_counter()
            bank.search(q, k, threads=-1)
            batch = (time.perf_counter() - t) / len(q) * 1e3
            ratio = dist.mean(1) / np.maximum(exact_d.mean(1), 1e-12)
            rows.append(
                {
                    "ef": int(ef),
                    "rerank": int(r),
                    "latency_ms": round(single, 3),
                    "cpu_ms": round(cpu, 3),
                    **({"latency_runs": walls, "cpu_runs": cpus} if len(walls) > 1 else {}),
                    "batch_ms_per_query": round(batch, 3),
                    "recall@2": round(recall_at(exact_i, ids), 4),
                    "worst_score_ratio": round(float(ratio.max()), 4),
                    "load": _load(),
                }
            )
    return rows
