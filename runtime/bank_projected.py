"""A two-stage HNSW bank for large banks: a graph over a PCA projection, exact re-ranking.

Stage 1 searches a reduced space: the bank rows projected on their first ``project`` principal
axes (fitted on the rows when the bank is built: a seeded sample of at most ``PCA_SAMPLE``
rows), an hnswlib graph over the projected rows, asked for ``rerank`` candidates (its search
width ``ef`` is at least that). Stage 2 re-ranks those candidates by exact squared L2 on the
full rows, so every distance returned is the exact one for its id: a neighbour the first stage
misses can only make a score higher, never lower.

Why: graph search cost grows with the dimension of each distance and a graph over noisy
full-width rows is poorly connected; real embeddings and the benchmark's mixture have most of
their variance in far fewer axes than they have dims. The 1M measurements (one-stage graph
against this bank, hnswlib and faiss walking it) are in BENCHMARKS.md, "Banks of a million, two
stages" (``python -m dn2.tools.bench.bank_scale --project D``).

Files (``bank.bin`` is the one the manifest's ``file`` names; the other two sit beside it,
listed and digested in ``files`` like every bundle file):

* ``<stem>.bin``: the hnswlib graph over the projected rows (dim = ``project``), checked byte by
  byte (:func:`dn2.runtime.bankfile.check_hnsw_file`) before hnswlib reads it;
* ``<stem>.proj.npy``: float32 ``[project + 1, dim]``, row 0 the mean, rows 1.. orthonormal axes;
* ``<stem>.rows.npy``: float32 ``[n, dim]``, the full rows, memory-mapped on load.

``engine`` says who walks the graph: ``hnswlib``, or ``faiss`` (``bank_faiss.py``: the same
graph, parsed into faiss with fp16 rows, faster per query at 1M: BENCHMARKS.md). ``auto``
(the default) takes faiss when it is installed (``dn2[kmeans]``), else hnswlib; the manifest
records the engine chosen, and a bundle without one (older) walks with hnswlib.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from . import bank_faiss
from .bank import HNSW_DEFAULTS, RERANK, Bank, BankError, HnswBank, _as_matrix, blas_threads
from .bankfile import BankFileError, check_hnsw_file, check_npy_file
from .configrules import HNSW_ENGINES

PCA_SAMPLE = 100_000  # rows the axes are fitted on (a seeded sample beyond that)
ORTHO_TOL = 1e-3  # |A A^T - I| allowed in a stored projection (float32 rounding is ~1e-6)
_BLOCK = 1 << 23  # floats gathered per re-rank block (32 MB)
ENGINES = HNSW_ENGINES  # auto, hnswlib, faiss


def resolve_engine(engine: str) -> str:
    """``auto`` -> faiss when importable, else hnswlib; ``faiss`` without faiss raises the
    error naming the extra."""
    if engine not in ENGINES:
        raise BankError(f"engine: expected one of {', '.join(ENGINES)}, found {engine!r}")
    if engine == "auto":
        return "faiss" if bank_faiss.faiss_available() else "hnswlib"
    if engine == "faiss":
        bank_faiss.faiss_module()
    return engine


def sibling(path, tag: str) -> Path:
    """``bank.bin`` -> ``bank.<tag>.npy`` (the projection and full-row files beside the graph)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{tag}.npy")


def fit_projection(x: np.ndarray, project: int, seed: int = 0) -> np.ndarray:
    """``[project + 1, dim]`` float32: the mean of ``x`` and its first ``project`` principal
    axes (eigenvectors of the covariance, largest first, sign fixed so the largest-magnitude
    entry of each is positive), from a seeded sample of at most PCA_SAMPLE rows."""
    n, dim = x.shape
    if not 1 <= project < dim:
        raise BankError(f"project: expected 1 <= project < dim {dim}, found {project}")
    rows = np.arange(n)
    if n > PCA_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(n, PCA_SAMPLE, replace=False))
    s = np.asarray(x[rows], np.float64)
    mean = s.mean(0)
    s -= mean
    _, vec = np.linalg.eigh(s.T @ s)
    axes = vec[:, ::-1][:, :project].T
    axes *= np.sign(axes[np.arange(project), np.abs(axes).argmax(1)])[:, None]
    return np.ascontiguousarray(np.vstack([mean[None], axes]), np.float32)


def check_projection(p: np.ndarray, name: str) -> None:
    """A stored projection: finite, its axes orthonormal within ORTHO_TOL."""
    if not np.isfinite(p).all():
        raise BankError(f"{name}: expected a finite projection, found NaN or inf")
    axes = p[1:].astype(np.float64)
    err = float(np.abs(axes @ axes.T - np.eye(len(axes))).max())
    if err > ORTHO_TOL:
        raise BankError(
            f"{name}: expected orthonormal projection axes (rows 1.. of [project + 1, dim]), "
            f"found |A A^T - I| up to {err:.3g} (allowed {ORTHO_TOL:g}); the file is damaged "
            f"or not a dn2 projection"
        )


class ProjectedHnswBank(Bank):
    """kind ``hnsw`` with ``project`` set: see the module docstring."""

    kind = "hnsw"
    suffix = ".bin"

    def __init__(
        self,
        dim: int,
        project: int,
        rerank: int = RERANK,
        M: int = HNSW_DEFAULTS["M"],
        ef_construction: int = HNSW_DEFAULTS["ef_construction"],
        ef: int = HNSW_DEFAULTS["ef"],
        seed: int = 100,
        threads: int = 1,
        engine: str = "auto",
    ):
        super().__init__(dim)
        self.project, self.rerank = int(project), int(rerank)
        self.engine = resolve_engine(engine)
        self._walker: Optional[bank_faiss.FaissWalker] = None  # engine faiss, made on first use
        self._source: Optional[Path] = None  # the graph file a faiss-walked bank was loaded from
        if not 1 <= self.project < self.dim:
            raise BankError(f"project: expected 1 <= project < dim {dim}, found {project}")
        if self.rerank < 1:
            raise BankError(f"rerank: expected >= 1, found {rerank}")
        self.graph = HnswBank(self.project, M, ef_construction, ef, seed, threads)
        self.proj: Optional[np.ndarray] = None
        self.rows = np.zeros((0, self.dim), np.float32)

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        # one query: a [1, dim] x [dim, project] product that BLAS runs on one thread anyway,
        # so the thread limit's own cost is skipped
        with contextlib.nullcontext() if len(x) == 1 else blas_threads(len(x)):
            return np.ascontiguousarray((x - self.proj[0]) @ self.proj[1:].T, np.float32)

    def add(self, x) -> None:
        a = _as_matrix(x, self.dim, "bank.add")
        if self.proj is None:  # the axes come from the first rows added (the fit's bank)
            self.proj = fit_projection(a, self.project, self.graph.seed)
        for i in range(0, len(a), 1 << 16):  # projected in blocks: bounded extra memory
            self.graph.add(self._reduce(a[i : i + (1 << 16)]))
        self.rows = np.concatenate([self.rows, a]) if self.n else a.copy()
        self._walker = None  # the graph changed: a faiss walker is re-made on the next search

    def search(self, q, k: int, threads: int = -1) -> Tuple[np.ndarray, np.ndarray]:
        k = self._check_k(k)
        q = _as_matrix(q, self.dim, "query")
        r = min(self.n, max(self.rerank, k))
        if self.engine == "faiss":  # candidates only, order unused
            if self._walker is None:  # a bank built in this process (a fit)
                self._walker = bank_faiss.FaissWalker.from_hnswlib(self.graph._index)
            cand = self._walker.search(self._reduce(q), r, self.graph.ef, threads)
        else:
            g = self.graph._index
            g.set_ef(max(self.graph.ef, r))  # hnswlib needs ef >= k
            cand, _ = g.knn_query(self._reduce(q), k=r, num_threads=threads)
        cand = np.sort(cand.astype(np.int64), 1)  # id order: equal distances resolve by id
        out_d = np.empty((len(q), k), np.float32)
        out_i = np.empty((len(q), k), np.int64)
        step = max(1, _BLOCK // (r * self.dim))
        rows = self.rows.view(np.ndarray)  # plain indexing: np.memmap's __getitem__ is Python
        for a in range(0, len(q), step):
            ids = cand[a : a + step]
            diff = rows[ids.ravel()].reshape(len(ids), r, self.dim) - q[a : a + step, None]
            d = np.einsum("qrd,qrd->qr", diff, diff)  # exact squared L2 on the full rows
            o = np.argsort(d, 1, kind="stable")[:, :k]
            at = np.arange(len(ids))[:, None]
            out_d[a : a + step], out_i[a : a + step] = d[at, o], ids[at, o]
        return out_d, out_i

    def vectors(self) -> np.ndarray:
        """The full rows in id order."""
        return np.asarray(self.rows, np.float32)

    def save(self, path) -> None:
        if self.graph._index is None:  # loaded for faiss: hnswlib holds nothing, copy the file
            shutil.copyfile(self._source, path)
        else:
            self.graph.save(path)
        for tag, arr in (("proj", self.proj), ("rows", self.rows)):
            with open(sibling(path, tag), "wb") as f:
                np.save(f, arr, allow_pickle=False)

    def params(self) -> Dict:
        p = self.graph.params()
        p.update(dim=self.dim, n=self.n, project=self.project, rerank=self.rerank)
        p["engine"] = self.engine
        return p

    @classmethod
    def of_parts(
        cls,
        proj,
        rows,
        index,
        rerank: int = RERANK,
        ef: int = 0,
        engine: str = "hnswlib",
        graph_file=None,
    ) -> ProjectedHnswBank:
        """A bank over an hnswlib ``index`` already built on ``rows`` projected by ``proj``
        (the benchmark builds its million-row graphs itself, with progress and checkpoints);
        engine faiss walks ``graph_file`` (that index saved), checked first."""
        bank = cls(rows.shape[1], proj.shape[0] - 1, rerank, index.M, index.ef_construction)
        bank.engine = resolve_engine(engine)
        if bank.engine == "faiss" and graph_file is not None:
            head = check_hnsw_file(graph_file, bank.project, len(rows))
            bank._walker = bank_faiss.FaissWalker.from_hnsw_file(graph_file, head)
        bank.graph.ef = int(ef) or bank.graph.ef
        bank.graph._index, bank.graph._n = index, int(index.get_current_count())
        bank.proj, bank.rows = np.asarray(proj, np.float32), rows
        return bank

    @classmethod
    def load(cls, path, params: Dict) -> ProjectedHnswBank:
        dim, project = int(params["dim"]), int(params["project"])
        n = None if params.get("n") is None else int(params["n"])
        bank = cls(
            dim,
            project,
            rerank=int(params.get("rerank", RERANK)),
            M=int(params["M"]),
            ef_construction=int(params["ef_construction"]),
            ef=int(params["ef"]),
            seed=int(params.get("seed", 100)),
            engine=str(params.get("engine", "hnswlib")),  # older bundles: hnswlib
        )
        pfile, rfile = sibling(path, "proj"), sibling(path, "rows")
        try:  # headers, shapes and lengths before numpy or hnswlib reads any of them
            check_npy_file(pfile, project + 1, dim)
            check_npy_file(rfile, n, dim)
        except BankFileError as exc:
            raise BankError(f"{exc} (the projection or full rows of a two-stage bank)") from None
        proj = np.load(pfile, allow_pickle=False)
        check_projection(proj, pfile.name)
        rows = np.load(rfile, mmap_mode="r", allow_pickle=False)
        if bank.engine == "faiss":  # the whole file checked, then parsed for faiss (no hnswlib)
            try:
                head = check_hnsw_file(
                    path, project, len(rows), bank.graph.M, bank.graph.ef_construction
                )
            except BankFileError as exc:
                raise BankError(str(exc)) from None
            bank._walker = bank_faiss.FaissWalker.from_hnsw_file(path, head)
            bank.graph._n, bank._source = len(rows), Path(path)
        else:
            bank.graph = HnswBank.load(path, {**params, "dim": project, "n": len(rows)})
        bank.proj, bank.rows = proj, rows
        return bank
