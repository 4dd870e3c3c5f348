"""Benchmark of the kNN banks: exact (numpy sgemm) vs HNSW (hnswlib), and k-means backends.

    python -m dn2.tools.bench.bank [--sizes 1000 10000 100000] [--dim 2048]
                                   [--grid 16:200:64 32:200:128] [--queries 200]
    python -m dn2.tools.bench.bank --kmeans [--kmeans-n 20000 --kmeans-c 500]
    python -m dn2.tools.bench.bank --bundle BUNDLE      # bundle load time

Data: structured synthetic embeddings (``mixture``), not iid noise: a 128-d latent Gaussian
mixture (100 overlapping clusters) mapped linearly to D dims plus isotropic noise, so
neighbours are defined by cluster structure as with real CNN features. Queries are fresh draws
from the same mixture (not bank members); OOD queries (anomaly-like) from other centres.

Reports per size and backend: build seconds, single-query latency (ms, batch 1, one thread
for HNSW), batched throughput (ms per query, all queries at once), and recall@2 of HNSW
against the exact bank (the fraction of the exact 2 nearest ids that HNSW returns), and the
worst ratio HNSW score / exact score (a miss can only raise a score). The exact bank's answer
is the reference, so its recall is 1 by definition. A miss on a normal query raises its score
(a false alarm risk); on an anomaly it only makes it more anomalous.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import List, Tuple

import numpy as np


def mixture(
    n: int,
    dim: int,
    clusters: int = 100,
    latent: int = 128,
    spread: float = 1.0,
    noise: float = 0.3,
    seed: int = 0,
    n_queries: int = 0,
    n_ood: int = 0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bank [n, dim], queries [n_queries, dim], out-of-distribution queries [n_ood, dim]).

    A ``latent``-d Gaussian mixture (``clusters`` centres drawn with std ``spread``, unit
    within-cluster std) mapped linearly to ``dim`` dims, plus isotropic ``noise``. The defaults
    (128-d latent, overlapping clusters) are hard enough that hnswlib's own default ef=10 drops
    to ~0.93 recall@2; OOD queries come from 20 other centres drawn twice as wide, like
    anomalies: far from the bank, where graph search is hardest.
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, spread, size=(clusters, latent))
    w = rng.normal(0.0, 1.0 / np.sqrt(latent), size=(latent, dim))

    def draw(m: int, centres: np.ndarray) -> np.ndarray:
        h = centres[rng.integers(0, len(centres), m)] + rng.normal(size=(m, latent))
        out = np.empty((m, dim), np.float32)
        for i in range(0, m, 8192):  # bounded temporaries at 100k x 2048
            hi = h[i : i + 8192]
            out[i : i + 8192] = hi @ w + noise * rng.standard_normal((len(hi), dim))
        return out

    x, q = draw(n, mu), draw(n_queries, mu)
    ood = draw(n_ood, rng.normal(0.0, 2 * spread, size=(20, latent)))
    return x, q, ood


def gaussian_mixture(
    n: int,
    dim: int,
    clusters: int = 100,
    latent: int = 128,
    spread: float = 1.0,
    noise: float = 0.3,
    seed: int = 0,
    n_queries: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """(bank, in-distribution queries) from ``mixture``."""
    x, q, _ = mixture(n, dim, clusters, latent, spread, noise, seed, n_queries)
    return x, q


def recall_at(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    k = exact_ids.shape[1]
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact_ids, approx_ids))
    return hits / (k * len(exact_ids))


def _latency(bank, q: np.ndarray, k: int, **kw) -> float:
    for row in q[:5]:  # warm-up: page faults, BLAS thread start
        bank.search(row[None, :], k, **kw)
    t = time.perf_counter()
    for row in q:
        bank.search(row[None, :], k, **kw)
    return (time.perf_counter() - t) / len(q) * 1e3


def _measure(make, x, q, ood, k: int, latency_kw: dict):
    """Build a bank with ``make()`` + ``add(x)``, then time it: build seconds, batched ms per
    query, single-query latency; returns those and the (dists, ids) of ``q`` and ``ood``."""
    t = time.perf_counter()
    bank = make()
    bank.add(x)
    build = time.perf_counter() - t
    bank.search(q[:8], k)  # warm-up
    t = time.perf_counter()
    on_q = bank.search(q, k)
    batch = (time.perf_counter() - t) / len(q) * 1e3
    on_ood = bank.search(ood, k)
    timing = {
        "build_s": round(build, 3),
        "latency_ms": round(_latency(bank, q[:50], k, **latency_kw), 3),
        "batch_ms_per_query": round(batch, 3),
    }
    return timing, on_q, on_ood


def bench_size(
    n: int,
    dim: int,
    grid: List[Tuple[int, int, int]],
    n_queries: int,
    build_threads: int,
    k: int = 2,
) -> List[dict]:
    from dn2.runtime.bank import ExactBank, HnswBank

    x, q, ood = mixture(n, dim, seed=n, n_queries=n_queries, n_ood=n_queries)
    timing, (ed, ei), (od, oi) = _measure(lambda: ExactBank(dim), x, q, ood, k, {})
    rows = [{"n": n, "dim": dim, "kind": "exact", **timing, "recall@2": 1.0}]
    for m, efc, ef in grid:
        timing, (hd, hi), (hod, hoi) = _measure(
            lambda: HnswBank(dim, M=m, ef_construction=efc, ef=ef, threads=build_threads),
            x,
            q,
            ood,
            k,
            {"threads": 1},
        )
        rows.append(
            {
                "n": n,
                "dim": dim,
                "kind": f"hnsw M={m} efc={efc} ef={ef}",
                **timing,
                "recall@2": round(recall_at(ei, hi), 4),
                "worst_score_ratio": round(
                    float((hd.mean(1) / np.maximum(ed.mean(1), 1e-12)).max()), 3
                ),
                "ood_recall@2": round(recall_at(oi, hoi), 4),
                "ood_worst_score_ratio": round(
                    float((hod.mean(1) / np.maximum(od.mean(1), 1e-12)).max()), 3
                ),
            }
        )
    return rows


def bench_kmeans(n: int, dim: int, c: int, repeats: int = 2) -> List[dict]:
    """Both backends, interleaved (so machine load hits them alike), seeds 0..repeats-1."""
    from dn2.runtime.kmeans import available_backend, kmeans

    x, _ = gaussian_mixture(n, dim, clusters=200, latent=32, spread=3.0, seed=1)
    rows, ok = [], []
    for backend in ("faiss", "sklearn"):
        try:
            available_backend(backend)  # import outside the timing
            ok.append(backend)
        except Exception as exc:  # a missing backend is reported, not fatal
            rows.append({"backend": backend, "error": str(exc)})
    for seed in range(repeats):
        for backend in ok:
            r = kmeans(x, c, seed=seed, backend=backend)
            rows.append(
                {
                    "backend": r.backend,
                    "seed": seed,
                    "n": n,
                    "dim": dim,
                    "C": c,
                    "seconds": round(r.seconds, 2),
                    "inertia_per_point": round(r.inertia / n, 3),
                }
            )
    return rows


def bench_bundle(path: str, repeats: int = 3) -> List[dict]:
    """Seconds to validate + load a bundle (checksums, bank) and to open it as a Detector."""
    from dn2.runtime.bundle import load_bundle
    from dn2.runtime.detector import Detector

    rows = []
    for what, fn in (
        ("load_bundle", lambda: load_bundle(path)),
        ("Detector.load", lambda: Detector.load(path, providers="cpu")),
    ):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "bundle": path,
                "what": what,
                "best_s": round(min(times), 3),
                "median_s": round(float(np.median(times)), 3),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.bank",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument(
        "--grid",
        nargs="+",
        default=["16:200:10", "16:200:64", "32:200:128"],
        help="HNSW M:ef_construction:ef settings to try",
    )
    p.add_argument("--queries", type=int, default=200)
    p.add_argument(
        "--build-threads",
        type=int,
        default=1,
        help="hnswlib build threads (1 = the deterministic build dn2-fit uses)",
    )
    p.add_argument("--kmeans", action="store_true", help="benchmark k-means backends instead")
    p.add_argument("--kmeans-n", type=int, default=20000)
    p.add_argument("--kmeans-c", type=int, default=500)
    p.add_argument("--kmeans-repeats", type=int, default=2)
    p.add_argument("--bundle", default=None, help="time loading this bundle instead")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    print(
        f"# machine: {platform.machine()} {platform.processor() or ''} "
        f"python {platform.python_version()} numpy {np.__version__}",
        file=sys.stderr,
    )
    if a.bundle:
        rows = bench_bundle(a.bundle)
    elif a.kmeans:
        rows = bench_kmeans(a.kmeans_n, a.dim, a.kmeans_c, a.kmeans_repeats)
    else:
        grid = [tuple(int(v) for v in g.split(":")) for g in a.grid]
        rows = []
        for n in a.sizes:
            rows += bench_size(n, a.dim, grid, a.queries, a.build_threads)
            for r in rows[-(len(grid) + 1) :]:
                print(
                    json.dumps(r) if a.json else "  ".join(f"{k}={v}" for k, v in r.items()),
                    flush=True,
                )
        return 0
    for r in rows:
        print(json.dumps(r) if a.json else "  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
