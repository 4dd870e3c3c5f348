"""kNN banks: the normal embeddings (or k-means centres) and their k-nearest search.

One small interface, two backends (and a two-stage HNSW bank in ``bank_projected.py``):

* ``ExactBank``: numpy float32, squared L2 by the norm trick ``||q||^2 - 2 q.b + ||b||^2``
  (one sgemm per block), clamped at 0, chunked over queries *and* bank rows so memory stays
  below ``max_block`` floats whatever the sizes. Saved as ``.npy`` (``allow_pickle=False``).
* ``HnswBank``: hnswlib, space ``'l2'`` (hnswlib returns *squared* L2, like the paper's eq. 2).
  ``M``, ``ef_construction``, ``ef`` and ``seed`` are recorded by ``params()`` and re-applied
  by ``load``. The build is deterministic: a fixed ``random_seed`` (level assignment) and a
  single-threaded ``add_items`` (insertion order fixed), so the same data gives the same graph,
  byte for byte (tested). Queries may use threads: they do not change the graph.

``search(q, k) -> (sq_dists [N, k] float32 ascending, ids [N, k] int64)``.

``auto`` picks exact when ``n * dim <= EXACT_MAX_ELEMENTS`` (2^25 floats, 128 MB: 16384 x 2048,
26214 x 1280, 65536 x 512). Measured with ``OMP_NUM_THREADS=2 python -m dn2.tools.bench.bank
--build-threads 2`` on this project's 2-core machine (1k / 10k rows: machine quiet; 100k rows:
load average ~10 from other jobs; figures in BENCHMARKS.md):

=========  ==========================  ============  ==============  ========  ===========
n x 2048   bank                        1 query (ms)  batched (ms/q)  build (s)  recall@2
=========  ==========================  ============  ==============  ========  ===========
1k         exact                       0.37          0.06            0.005     1 (ref.)
1k         hnsw M=32 efc=200 ef=128    0.52          0.21            0.19      1.0
10k        exact                       4.1           0.38            0.04      1 (ref.)
10k        hnsw M=32 efc=200 ef=128    4.4           4.2             37        1.0
100k       exact                       110           11.4            1.4       1 (ref.)
100k       hnsw M=16 efc=200 ef=10     0.78          0.68            546       0.72
100k       hnsw M=32 efc=200 ef=128    2.7           2.2             624       0.9975
=========  ==========================  ============  ==============  ========  ===========

Exact single-query cost is memory-bound (~0.2 ns per stored float, quiet); batched exact beats
HNSW to beyond 10k x 2048. The cut sits where exact single-query latency (~6-7 ms at 16k x
2048) is within 2x of HNSW's (~3-4 ms at the defaults) while exact and build-free. Defaults
M=32, ef_construction=200, ef=128 hold recall@2 >= 0.99 in-distribution up to 100k (0.9975;
hnswlib's ef=10: 0.72, a normal score up to 2.2x); out-of-distribution recall is lower (0.76)
but a miss only raises an anomaly's score (<= 5 %). Past 100k rows: ``bank_projected.py``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional, Tuple

import numpy as np

from .bankfile import BankFileError, check_hnsw_file, check_npy_file
from .errors import Dn2Error

EXACT_MAX_ELEMENTS = 1 << 25  # size cut for index="auto" (see module docstring)
HNSW_DEFAULTS = {"M": 32, "ef_construction": 200, "ef": 128}  # recall@2 >= 0.99, bench_bank
# Past LARGE_BANK_ROWS rows (where HNSW_DEFAULTS last held recall@2 >= 0.99) one graph over the
# full rows falls short (1M x 512: 0.9795 at ef=512): fit_bundle takes hnsw_params(n, dim), the
# two-stage bank of bank_projected.py, M=48 (1M x 512: 0.9925 at ef=128; BENCHMARKS.md).
LARGE_BANK_ROWS, LARGE_BANK_EF, LARGE_BANK_M, PROJECT_DIM, RERANK = 100_000, 512, 48, 128, 64
METRIC = "sqeuclidean"
KINDS = ("exact", "hnsw")


def hnsw_params(n: int, dim: int = 0) -> Dict[str, int]:
    """HNSW_DEFAULTS up to LARGE_BANK_ROWS rows; above, the two-stage bank (``project``,
    ``rerank``) when dim > PROJECT_DIM, else one stage with ef raised to LARGE_BANK_EF."""
    big, out = int(n) > LARGE_BANK_ROWS, dict(HNSW_DEFAULTS)
    if big and int(dim) > PROJECT_DIM:
        out.update(M=LARGE_BANK_M, project=PROJECT_DIM, rerank=RERANK)
    elif big:
        out["ef"] = max(out["ef"], LARGE_BANK_EF)
    return out


class BankError(Dn2Error):
    """A bank was asked for something it cannot do (k > n, wrong dims, empty bank...)."""


def _as_matrix(x, dim: Optional[int], what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise BankError(f"{what}: expected a 2-D array [N, D], found shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise BankError(f"{what}: expected dimension {dim}, found {a.shape[1]}")
    if not np.issubdtype(a.dtype, np.number):
        raise BankError(f"{what}: expected numbers, found dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise BankError(f"{what}: expected finite values, found NaN or inf")
    return a


class Bank:
    """Interface: add, search, save, load, params; ``n`` entries of dimension ``dim``."""

    kind = "base"
    suffix = ""

    def __init__(self, dim: int):
        self.dim = int(dim)

    @property
    def n(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def add(self, x) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def search(self, q, k: int) -> Tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def save(self, path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def params(self) -> Dict:
        return {"kind": self.kind, "n": self.n, "dim": self.dim, "metric": METRIC}

    def _check_k(self, k: int) -> int:
        k = int(k)
        if k < 1:
            raise BankError(f"k: expected >= 1, found {k}")
        if k > self.n:
            raise BankError(
                f"k={k} nearest neighbours requested but the bank holds only {self.n} entries"
            )
        return k


# Queries up to this many rows run their sgemm on one BLAS thread. A multi-threaded OpenBLAS
# call leaves its worker threads spin-waiting for the next call, and on a small CPU those
# spinning threads take the cores from the onnxruntime run of the next frame: ResNet101 fp32
# batch 1 on 2 cores, decode + model + exact kNN (5000 x 2048) in a loop, median 163.1 ms per
# model run with the kNN on 2 BLAS threads vs 112.3 ms on one (124.5 ms without the kNN step;
# python -m dn2.tools.bench.blas_spin, BENCHMARKS.md "End to end"). One thread costs little
# here: a 64 x 2048 x 16384 product is ~4 GFLOP. Large query sets (fit's leave-one-out scores) keep every BLAS thread.
SINGLE_THREAD_QUERIES = 64
_BLAS = None


def blas_threads(n_queries: int):
    """Context that limits numpy's BLAS to one thread for ``n_queries`` <= SINGLE_THREAD_QUERIES
    (no-op for more, or when threadpoolctl is not installed)."""
    global _BLAS
    if n_queries > SINGLE_THREAD_QUERIES:
        return contextlib.nullcontext()
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:  # a base dependency; tolerate its absence rather than fail a query
            _BLAS = False
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext()


class ExactBank(Bank):
    kind = "exact"
    suffix = ".npy"

    def __init__(self, dim: int, max_block: int = 1 << 24):
        super().__init__(dim)
        self.max_block = int(max_block)  # floats per distance block (64 MB at the default)
        self._x = np.zeros((0, self.dim), np.float32)
        self._norms = np.zeros((0,), np.float32)

    @property
    def n(self) -> int:
        return int(self._x.shape[0])

    @property
    def data(self) -> np.ndarray:
        return self._x

    def add(self, x) -> None:
        a = _as_matrix(x, self.dim, "bank.add")
        self._x = np.ascontiguousarray(np.concatenate([self._x, a])) if self.n else a.copy()
        self._norms = np.einsum("ij,ij->i", self._x, self._x)

    def search(self, q, k: int) -> Tuple[np.ndarray, np.ndarray]:
        k = self._check_k(k)
        q = _as_matrix(q, self.dim, "query")
        nq, nb = q.shape[0], self.n
        qn = np.einsum("ij,ij->i", q, q)
        qc = max(1, min(nq, 1024, self.max_block // max(1, min(nb, 8192))))
        bc = max(k, min(nb, self.max_block // qc))
        out_d = np.empty((nq, k), np.float32)
        out_i = np.empty((nq, k), np.int64)
        with blas_threads(nq):
            self._search_blocks(q, qn, k, qc, bc, out_d, out_i)
        return out_d, out_i

    def _search_blocks(self, q, qn, k, qc, bc, out_d, out_i) -> None:
        nb = self.n
        for q0 in range(0, q.shape[0], qc):
            qs = q[q0 : q0 + qc]
            best_d = np.full((qs.shape[0], 0), np.inf, np.float32)
            best_i = np.zeros((qs.shape[0], 0), np.int64)
            for b0 in range(0, nb, bc):
                blk = self._x[b0 : b0 + bc]
                d = qs @ blk.T  # sgemm
                d *= -2.0
                d += qn[q0 : q0 + qc, None]
                d += self._norms[None, b0 : b0 + bc]
                np.maximum(d, 0.0, out=d)
                kk = min(k, d.shape[1])
                part = (
                    np.argpartition(d, kk - 1, axis=1)[:, :kk]
                    if kk < d.shape[1]
                    else np.broadcast_to(np.arange(d.shape[1]), d.shape).copy()
                )
                cand_d = np.concatenate([best_d, np.take_along_axis(d, part, 1)], axis=1)
                cand_i = np.concatenate([best_i, part + b0], axis=1)
                # stable order: distance, then id (ties resolve the same way every run)
                order = np.lexsort((cand_i, cand_d), axis=1)[:, :k]
                best_d = np.take_along_axis(cand_d, order, 1)
                best_i = np.take_along_axis(cand_i, order, 1)
            out_d[q0 : q0 + qc], out_i[q0 : q0 + qc] = best_d, best_i

    def save(self, path) -> None:
        with open(path, "wb") as f:
            np.save(f, self._x, allow_pickle=False)

    @classmethod
    def load(cls, path, params: Optional[Dict] = None) -> ExactBank:
        p = params or {}
        try:  # header, dtype, shape and length first: never allocate what the file claims
            check_npy_file(path, _int_or_none(p.get("n")), _int_or_none(p.get("dim")))
            x = np.load(path, allow_pickle=False)
        except BankFileError as exc:
            raise BankError(str(exc)) from None
        except (ValueError, OSError, EOFError) as exc:
            raise BankError(
                f"{path}: expected a numpy float32 [N, D] array file, found unreadable data ({exc})"
            ) from None
        if x.ndim != 2 or x.dtype != np.float32:
            raise BankError(f"{path}: expected a float32 [N, D] array, found {x.dtype} {x.shape}")
        bank = cls(x.shape[1])
        bank.add(x)
        return bank


class HnswBank(Bank):
    kind = "hnsw"
    suffix = ".bin"

    def __init__(
        self,
        dim: int,
        M: int = HNSW_DEFAULTS["M"],
        ef_construction: int = HNSW_DEFAULTS["ef_construction"],
        ef: int = HNSW_DEFAULTS["ef"],
        seed: int = 100,
        threads: int = 1,
    ):
        super().__init__(dim)
        import hnswlib  # base dependency; imported here so ExactBank users never pay for it

        self.M, self.ef_construction, self.ef = int(M), int(ef_construction), int(ef)
        self.seed = int(seed)
        self.threads = int(threads)  # build threads; 1 = deterministic graph
        self._hnswlib = hnswlib
        self._index = None
        self._n = 0

    @property
    def n(self) -> int:
        return self._n

    def _new_index(self, capacity: int):
        idx = self._hnswlib.Index(space="l2", dim=self.dim)
        idx.init_index(
            max_elements=capacity,
            ef_construction=self.ef_construction,
            M=self.M,
            random_seed=self.seed,
        )
        idx.set_ef(self.ef)
        return idx

    def add(self, x) -> None:
        a = _as_matrix(x, self.dim, "bank.add")
        if self._index is None:
            self._index = self._new_index(max(1, a.shape[0]))
        else:
            self._index.resize_index(self._n + a.shape[0])
        ids = np.arange(self._n, self._n + a.shape[0], dtype=np.int64)
        self._index.add_items(a, ids, num_threads=self.threads)
        self._n += a.shape[0]

    def search(self, q, k: int, threads: int = -1) -> Tuple[np.ndarray, np.ndarray]:
        k = self._check_k(k)
        q = _as_matrix(q, self.dim, "query")
        self._index.set_ef(max(self.ef, k))  # hnswlib needs ef >= k
        try:
            labels, dists = self._index.knn_query(q, k=k, num_threads=threads)
        finally:
            self._index.set_ef(self.ef)
        order = np.lexsort((labels, dists), axis=1)  # same tie order as ExactBank
        return (
            np.maximum(np.take_along_axis(dists, order, 1), 0).astype(np.float32),
            np.take_along_axis(labels, order, 1).astype(np.int64),
        )

    def vectors(self) -> np.ndarray:
        """The stored vectors in id order (for rebuilding / inspection)."""
        return np.asarray(self._index.get_items(np.arange(self._n)), np.float32)

    def save(self, path) -> None:
        self._index.save_index(str(path))

    def params(self) -> Dict:
        p = super().params()
        p.update(M=self.M, ef_construction=self.ef_construction, ef=self.ef, seed=self.seed)
        return p

    @classmethod
    def load(cls, path, params: Dict) -> HnswBank:
        bank = cls(
            int(params["dim"]),
            M=int(params["M"]),
            ef_construction=int(params["ef_construction"]),
            ef=int(params["ef"]),
            seed=int(params.get("seed", 100)),
        )
        try:  # the whole file, structure and sizes, before hnswlib parses it (bankfile.py)
            head = check_hnsw_file(
                path,
                bank.dim,
                n=_int_or_none(params.get("n")),
                M=bank.M,
                ef_construction=bank.ef_construction,
            )
        except BankFileError as exc:
            raise BankError(str(exc)) from None
        idx = bank._hnswlib.Index(space="l2", dim=bank.dim)
        try:  # capacity = the checked count: hnswlib never allocates what the header claims
            idx.load_index(str(path), max_elements=int(head["n"]))
        except (RuntimeError, OSError, ValueError) as exc:
            raise BankError(
                f"{path}: expected an hnswlib index of dim {bank.dim}, "
                f"found unreadable data ({exc})"
            ) from None
        idx.set_ef(bank.ef)  # ef is not stored in the hnswlib file: re-apply the recorded one
        bank._index, bank._n = idx, int(idx.get_current_count())
        return bank


def _int_or_none(v) -> Optional[int]:
    return None if v is None else int(v)


def _two_stage():
    from .bank_projected import ProjectedHnswBank  # imports this module: not at the top

    return ProjectedHnswBank


def choose_kind(index: str, n: int, dim: int) -> str:
    """``auto`` -> exact when n * dim <= EXACT_MAX_ELEMENTS, else hnsw."""
    if index == "auto":
        return "exact" if n * dim <= EXACT_MAX_ELEMENTS else "hnsw"
    if index not in KINDS:
        raise BankError(f"index: expected auto, exact or hnsw, found {index!r}")
    return index


def build_bank(x, index: str = "auto", **hnsw) -> Bank:
    """A bank holding the rows of ``x`` (ids 0..N-1), backend chosen by ``index``."""
    x = _as_matrix(x, None, "bank data")
    if x.shape[0] == 0:
        raise BankError("bank data: expected at least one embedding, found none")
    kind = choose_kind(index, x.shape[0], x.shape[1])
    if kind == "exact":
        bank = ExactBank(x.shape[1])
    elif hnsw.get("project"):  # 0 / absent: one stage
        bank = _two_stage()(x.shape[1], **hnsw)
    else:
        drop = ("project", "rerank", "engine")
        bank = HnswBank(x.shape[1], **{k: v for k, v in hnsw.items() if k not in drop})
    bank.add(x)
    return bank


def load_bank(path, params: Dict) -> Bank:
    kind = params.get("kind")
    if kind == "exact":
        bank = ExactBank.load(path, params)
    elif kind == "hnsw":  # two stages when ``project`` is set
        bank = (_two_stage() if params.get("project") else HnswBank).load(path, params)
    else:
        raise BankError(f"bank kind: expected one of {KINDS}, found {kind!r}")
    for key in ("n", "dim"):
        found = bank.n if key == "n" else bank.dim
        if key in params and int(params[key]) != found:
            raise BankError(
                f"{os.path.basename(str(path))}: manifest says {key}={params[key]}, "
                f"found {key}={found} in the bank file"
            )
    return bank
