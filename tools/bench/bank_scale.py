"""Banks of a million: HNSW build / memory / latency / recall@2 and k-means in bounded memory.

    python -m dn2.tools.bench.bank_scale --n 1000000 --dim 512 --workdir /tmp/b1m \\
        [--data mixture|real --real EMB.npy] [--grid 16:100 32:200] [--efs 32 64 128]
        [--queries 1000] [--build-threads 2] [--kmeans-c 1000 --kmeans-sample 100000]
        [--project 128 --rerank 16 32 64]

``--project D``: the two-stage bank of ``dn2.runtime.bank_projected`` (the product's own
class): the graph is built over the rows projected on their first D principal axes (written
to ``--workdir`` like the rows), queries are answered by ``ProjectedHnswBank.search`` (graph
candidates, ``--rerank`` R of them, re-ranked exactly on the memory-mapped full rows), one
row per (ef, R).

The bank rows never sit in anonymous memory: they are written chunk by chunk to a ``.npy`` in
``--workdir`` and read back memory-mapped (page cache, reclaimable), so the process's own
memory is the HNSW graph (which holds its own copy of the vectors) plus chunk-sized buffers.

Data:
* ``mixture``: the structured synthetic embeddings of ``dn2.tools.bench.bank.mixture``
  (128-d latent Gaussian mixture, 100 overlapping clusters, linear map to D dims + isotropic
  noise), drawn in chunks from one fixed set of centres and map; queries are fresh draws (not
  bank rows).
* ``real``: real embeddings (``--real``, a float32 ``.npy`` [R, D], e.g. Lite0 embeddings of
  Fashion-MNIST) replicated to N rows, each copy plus Gaussian noise of ``--noise`` times the
  per-dimension std of the real set; queries are noisy copies of held-out real rows.

Exact ground truth: every query against all N rows, streamed in chunks (sgemm per chunk, top-2
merged), so recall@2 is against the true 2 nearest rows. Peak memory is the process's
``ru_maxrss`` (resident, includes touched mmap pages) and anonymous RSS from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from typing import Dict, List, Tuple

import numpy as np

CHUNK = 32768


def _mem() -> Dict[str, float]:
    """Resident and anonymous memory now, and the peak resident size, in GiB."""
    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = round(int(val.split()[0]) / 2**20, 2)
    except OSError:
        pass
    return out


def _load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {_load()}] {msg}", file=sys.stderr, flush=True)


class MixtureStream:
    """``dn2.tools.bench.bank.mixture`` drawn in chunks from one fixed set of centres and
    linear map."""

    def __init__(
        self,
        dim: int,
        clusters: int = 100,
        latent: int = 128,
        spread: float = 1.0,
        noise: float = 0.3,
        seed: int = 0,
    ):
        self.rng = np.random.default_rng(seed)
        self.mu = self.rng.normal(0.0, spread, size=(clusters, latent))
        self.w = self.rng.normal(0.0, 1.0 / np.sqrt(latent), size=(latent, dim)).astype(np.float32)
        self.dim, self.noise, self.latent = dim, noise, latent

    def draw(self, m: int) -> np.ndarray:
        h = self.mu[self.rng.integers(0, len(self.mu), m)] + self.rng.normal(size=(m, self.latent))
        out = h.astype(np.float32) @ self.w
        out += np.float32(self.noise) * self.rng.standard_normal((m, self.dim), np.float32)
        return out


class RealStream:
    """Real embeddings replicated with noise: row i is ``src[j] + noise * std * N(0, 1)``."""

    def __init__(self, real: np.ndarray, n_queries: int, noise: float, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        perm = self.rng.permutation(len(real))
        self.held = real[perm[:n_queries]]  # query sources: never in the bank
        self.src = real[perm[n_queries:]]
        self.scale = (noise * real.std(0)).astype(np.float32)
        self.dim = real.shape[1]

    def draw(self, m: int, source=None) -> np.ndarray:
        src = self.src if source is None else source
        base = src[self.rng.integers(0, len(src), m)]
        return base + self.scale * self.rng.standard_normal((m, self.dim), np.float32)


def write_bank(path: str, n: int, stream) -> np.ndarray:
    """N rows drawn chunk by chunk into a .npy at ``path``; returned memory-mapped read-only."""
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, stream.dim))
    for i in range(0, n, CHUNK):
        x[i : i + CHUNK] = stream.draw(min(CHUNK, n - i))
    x.flush()
    del x
    return np.load(path, mmap_mode="r")


def exact_top(x: np.ndarray, q: np.ndarray, k: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of memory-mapped ``x`` for every query, streamed over x."""
    qn = np.einsum("ij,ij->i", q, q)
    best_d = np.full((len(q), k), np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for i in range(0, len(x), CHUNK):
        c = np.asarray(x[i : i + CHUNK])
        d = qn[:, None] - 2.0 * (q @ c.T) + np.einsum("ij,ij->i", c, c)[None, :]
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        cd = np.take_along_axis(d, part, 1)
        all_d = np.concatenate([best_d, cd], 1)
        all_i = np.concatenate([best_i, part + i], 1)
        o = np.argsort(all_d, 1)[:, :k]
        best_d, best_i = np.take_along_axis(all_d, o, 1), np.take_along_axis(all_i, o, 1)
    return np.maximum(best_d, 0), best_i


def recall_at(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact_ids, approx_ids))
    return hits / exact_ids.size


def index_path(workdir: str, data: str, n: int, dim, m: int, efc: int) -> str:
    return os.path.join(workdir, f"hnsw_{data}_{n}x{dim}_M{m}_efc{efc}.bin")


def build_hnsw(x: np.ndarray, m: int, efc: int, threads: int, seed: int = 0, save: str = ""):
    """HNSW over all rows of ``x``, added in 20 steps with a progress line each. With ``save``
    the graph is written to ``save + '.partial'`` every 5 steps (a checkpoint: a later run with
    the same ``save`` resumes from it) and to ``save`` when complete."""
    import hnswlib

    index = hnswlib.Index(space="l2", dim=x.shape[1])
    partial = save + ".partial" if save else ""
    start = 0
    if partial and os.path.exists(partial):
        index.load_index(partial, max_elements=len(x))
        start = index.get_current_count()
        say(f"resuming {partial}: {start}/{len(x)} rows already in the graph")
    else:
        index.init_index(max_elements=len(x), M=m, ef_construction=efc, random_seed=seed)
    t0 = time.perf_counter()
    step = max(CHUNK, len(x) // 20)
    for n_step, i in enumerate(range(start, len(x), step), 1):
        c = np.ascontiguousarray(x[i : i + step])
        index.add_items(c, np.arange(i, i + len(c)), num_threads=threads)
        dt = time.perf_counter() - t0
        done = i + len(c)
        say(f"hnsw M={m} efc={efc}: {done}/{len(x)} rows, {(done - start) / dt:.0f} rows/s")
        if partial and n_step % 5 == 0 and done < len(x):
            index.save_index(partial)
            say(f"checkpoint {partial} at {done} rows")
    if save:
        index.save_index(save)
        if os.path.exists(partial):
            os.remove(partial)
        say(f"saved {save}")
    return index, time.perf_counter() - t0


def load_hnsw(path: str, dim: int):
    """A saved HNSW graph (``--save-index``) for re-measuring recall and latency only."""
    import hnswlib

    index = hnswlib.Index(space="l2", dim=dim)
    index.load_index(path)
    return index


def query_rows(index, q, exact_d, exact_i, efs: List[int], k: int = 2) -> List[dict]:
    rows = []
    for ef in efs:
        index.set_ef(int(ef))
        for row in q[:20]:  # warm-up
            index.knn_query(row[None, :], k=k, num_threads=1)
        t = time.perf_counter()
        ids = np.empty((len(q), k), np.int64)
        dist = np.empty((len(q), k), np.float32)
        for j, row in enumerate(q):
            lab, d = index.knn_query(row[None, :], k=k, num_threads=1)
            ids[j], dist[j] = lab[0], d[0]
        single = (time.perf_counter() - t) / len(q) * 1e3
        t = time.perf_counter()
        index.knn_query(q, k=k, num_threads=-1)
        batch = (time.perf_counter() - t) / len(q) * 1e3
        ratio = dist.mean(1) / np.maximum(exact_d.mean(1), 1e-12)
        rows.append(
            {
                "ef": int(ef),
                "latency_ms": round(single, 3),
                "batch_ms_per_query": round(batch, 3),
                "recall@2": round(recall_at(exact_i, ids), 4),
                "worst_score_ratio": round(float(ratio.max()), 3),
                "load": _load(),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.bank_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--data", choices=("mixture", "real"), default="mixture")
    p.add_argument("--real", default=None, help="float32 .npy [R, D] of real embeddings")
    p.add_argument("--noise", type=float, default=0.3, help="real: noise std / per-dim std")
    p.add_argument("--workdir", required=True, help="where the memory-mapped bank rows go")
    p.add_argument("--grid", nargs="+", default=["16:100"], help="HNSW M:ef_construction")
    p.add_argument("--efs", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--kmeans-c", type=int, default=0, help="also k-means to C centres")
    p.add_argument("--kmeans-sample", type=int, default=100_000)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="use the bank rows already in --workdir (same --data, --n, dim)",
    )
    p.add_argument(
        "--skip-hnsw",
        action="store_true",
        help="no HNSW build and no exact ground truth (k-means only)",
    )
    p.add_argument(
        "--save-index",
        action="store_true",
        help="write each HNSW graph (and checkpoints while building) to --workdir; "
        "a rerun with the same arguments resumes an unfinished build from its checkpoint",
    )
    p.add_argument(
        "--load-index",
        default=None,
        help="a graph saved by --save-index: no build, only recall@2 and latency at --efs "
        "(needs the bank rows and ground truth the saving run left in --workdir)",
    )
    p.add_argument(
        "--project",
        type=int,
        default=0,
        help="the two-stage bank: graph over the first D principal axes, exact re-rank",
    )
    p.add_argument(
        "--rerank", type=int, nargs="+", default=[64], help="--project: candidates re-ranked"
    )
    p.add_argument("--engine", choices=("hnswlib", "faiss"), default="hnswlib", help="--project")
    p.add_argument("--json", default=None, help="write all rows here too")
    a = p.parse_args(argv)
    if a.load_index:
        a.reuse = True
    os.makedirs(a.workdir, exist_ok=True)
    say(
        f"machine: {platform.machine()} cpus {os.cpu_count()} python "
        f"{platform.python_version()} numpy {np.__version__}"
    )
    if a.data == "real":
        if not a.real:
            p.error("--data real needs --real EMB.npy")
        real = np.load(a.real, allow_pickle=False).astype(np.float32)
        stream = RealStream(real, a.queries, a.noise)
        q = stream.draw(a.queries, stream.held)
    else:
        stream = MixtureStream(a.dim)
        q = None
    t = time.perf_counter()
    path = os.path.join(a.workdir, f"bank_{a.data}_{a.n}.npy")
    if a.reuse and os.path.exists(path):
        x = np.load(path, mmap_mode="r")
        if x.shape != (a.n, stream.dim):
            p.error(f"--reuse: {path} holds {x.shape}, expected {(a.n, stream.dim)}")
    else:
        x = write_bank(path, a.n, stream)
    if q is None:
        q = stream.draw(a.queries)
    q = np.ascontiguousarray(q, np.float32)
    say(f"data {a.data} {x.shape} written in {time.perf_counter() - t:.1f} s; {_mem()}")
    rows = []
    if a.skip_hnsw:
        a.grid = []
    truth = os.path.join(a.workdir, f"truth_{a.data}_{a.n}x{x.shape[1]}_q{len(q)}.npz")
    t = time.perf_counter()
    if a.reuse and os.path.exists(truth):  # the queries and exact answers of the saving run
        with np.load(truth, allow_pickle=False) as z:
            q, ed, ei, exact_s = z["q"], z["d"], z["i"], float(z["seconds"])
        say(f"ground truth read from {truth}")
    elif a.load_index:
        p.error(f"--load-index: no ground truth {truth} (run with --save-index first)")
    elif a.grid:
        ed, ei = exact_top(x, q)
        exact_s = time.perf_counter() - t
        np.savez(truth, q=q, d=ed, i=ei, seconds=exact_s)
    else:
        ed, ei, exact_s = None, None, 0.0
    say(
        f"exact ground truth: {exact_s:.1f} s for {len(q)} queries "
        f"({exact_s / len(q) * 1e3:.1f} ms/query batched); {_mem()}"
    )
    base = {
        "n": a.n,
        "dim": int(x.shape[1]),
        "data": a.data,
        "exact_batched_ms_per_query": round(exact_s / len(q) * 1e3, 2) if a.grid else None,
    }
    graph_rows, measure = x, lambda index, _=None: query_rows(index, q, ed, ei, a.efs)
    if a.project and (a.grid or a.load_index):
        from dn2.runtime.bank_projected import ProjectedHnswBank
        from dn2.tools.bench.bank_scale_proj import project_rows, query_two_stage

        t = time.perf_counter()
        proj, graph_rows = project_rows(a.workdir, x, a.project, f"{a.data}_{a.n}x{x.shape[1]}")
        base.update(project=a.project, project_s=round(time.perf_counter() - t, 1), engine=a.engine)

        def measure(index, graph_file=None):
            bank = ProjectedHnswBank.of_parts(
                proj, x, index, engine=a.engine, graph_file=graph_file
            )
            return query_two_stage(bank, q, ed, ei, a.efs, a.rerank)

    tag = f"{x.shape[1]}" + (f"p{a.project}" if a.project else "")
    if a.load_index:
        a.grid = []
        index = load_hnsw(a.load_index, int(graph_rows.shape[1]))
        if index.get_current_count() != len(x):
            p.error(
                f"--load-index: {a.load_index} holds {index.get_current_count()} rows, "
                f"the bank {len(x)}"
            )
        for r in measure(index, a.load_index):
            row = {
                **base,
                "M": index.M,
                "ef_construction": index.ef_construction,
                "index": a.load_index,
                **_mem(),
                **r,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for g in a.grid:
        m, efc = (int(v) for v in g.split(":"))
        save = index_path(a.workdir, a.data, a.n, tag, m, efc) if a.save_index else ""
        index, build = build_hnsw(graph_rows, m, efc, a.build_threads, save=save)
        mem = _mem()
        say(f"built M={m} efc={efc} in {build:.1f} s; {mem}")
        for r in measure(index, save or None):
            row = {
                **base,
                "M": m,
                "ef_construction": efc,
                "build_s": round(build, 1),
                "build_threads": a.build_threads,
                **mem,
                **r,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del index
    if a.kmeans_c:
        from dn2.tools.bench.bank_kmeans import kmeans_bounded

        row = {**base, "kmeans": kmeans_bounded(x, a.kmeans_c, a.kmeans_sample), "load": _load()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
