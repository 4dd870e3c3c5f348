"""faiss walks the two-stage bank's graph: engine ``faiss`` of ``bank_projected.py``.

The graph stays the hnswlib graph ``dn2 fit`` builds and saves (``bank.bin``); only the search
changes. At load, the file is checked whole by :func:`dn2.runtime.bankfile.check_hnsw_file`,
then parsed here with numpy into a ``faiss.IndexHNSWSQ`` (fp16 rows): the same nodes, levels,
links and entry point, so faiss reads no file and hnswlib loads nothing. Why: at 1,000,000
rows the search is bound by memory, one cache miss per distance; faiss keeps the links apart
from the rows and reads 2 bytes per axis instead of hnswlib's 4 (a 128-axis row: 256 bytes
instead of hnswlib's 512 bytes of row plus 388 of links in one record), and walks the same
graph faster, faster again with the nodes renumbered by cluster (below; measured in
BENCHMARKS.md, "Banks of a million, two stages: faiss walks the same graph"). The fp16
rounding only orders candidates; the exact re-rank on the full rows gives every distance
returned.

faiss is the optional extra ``dn2[kmeans]``; without it this engine says so
(:func:`faiss_module`) and ``dn2 fit`` keeps engine ``hnswlib``.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from typing import Dict, Optional

import numpy as np

from .bankfile import HNSW_HEADER, check_hnsw_file
from .errors import Dn2Error, MissingExtraError

_CHUNK = 1 << 16  # level-0 records parsed per step
# Past ORDER_MIN_ROWS nodes the walker renumbers them cluster by cluster (k-means of the
# projected rows, ORDER_ROWS_PER_LIST rows per list, at most ORDER_LISTS lists), so a walk
# that stays near its query reads nearby memory (less CPU per query than file order on the
# same graph: BENCHMARKS.md); results do not change.
ORDER_MIN_ROWS, ORDER_ROWS_PER_LIST, ORDER_LISTS = 100_000, 1000, 1000


def faiss_module(purpose: str = "the faiss engine of the two-stage bank"):
    try:
        import faiss  # optional extra dn2[kmeans]
    except ImportError:
        raise MissingExtraError("faiss", "kmeans", purpose) from None
    return faiss


def faiss_available() -> bool:
    try:
        faiss_module()
    except MissingExtraError:
        return False
    return True


def advise_huge_pages(arr: np.ndarray) -> bool:
    """Ask Linux to back ``arr``'s memory with 2 MiB pages (``madvise`` MADV_HUGEPAGE, then
    MADV_COLLAPSE, Linux >= 6.1): a walk over a 1M-node graph touches pages all over its ~0.6
    GiB, and with 4 KiB pages nearly every distance also misses the TLB. Best effort: False
    where the kernel or platform says no; the search is the same either way."""
    if not sys.platform.startswith("linux") or arr.nbytes < (4 << 20):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return False
    start = (arr.ctypes.data + (1 << 21) - 1) & ~((1 << 21) - 1)  # whole 2 MiB pages inside
    end = (arr.ctypes.data + arr.nbytes) & ~((1 << 21) - 1)
    if end <= start:
        return False
    hint = libc.madvise(start, end - start, 14)  # MADV_HUGEPAGE
    return hint == 0 and libc.madvise(start, end - start, 25) == 0  # MADV_COLLAPSE


def cluster_order(index, faiss, seed: int = 0) -> np.ndarray:
    """Node numbers sorted by their k-means list (stable: file order within a list); the
    lists trained with faiss on a seeded sample of the index's own (fp16) rows."""
    n = index.ntotal
    lists = max(1, min(ORDER_LISTS, n // ORDER_ROWS_PER_LIST))
    pick = np.sort(np.random.default_rng(seed).choice(n, min(n, 50 * lists), replace=False))
    store = faiss.downcast_index(index.storage)
    sample = np.stack([store.reconstruct(int(i)) for i in pick])
    km = faiss.Kmeans(index.d, lists, niter=10, seed=seed + 1, verbose=False)
    km.train(sample)
    assign = np.empty(n, np.int64)
    for a in range(0, n, _CHUNK):
        rows = store.reconstruct_n(a, min(_CHUNK, n - a))
        assign[a : a + len(rows)] = km.index.search(rows, 1)[1][:, 0]
    return np.argsort(assign, kind="stable").astype(np.int64)


class FaissWalker:
    """A faiss HNSW index holding an hnswlib graph; ``search`` returns the hnswlib labels."""

    def __init__(self, index, labels: np.ndarray):
        self.index, self.labels = index, labels
        self._faiss, self._params = faiss_module(), {}

    @classmethod
    def from_hnsw_file(cls, path, head: Dict, order_min_rows: Optional[int] = None) -> FaissWalker:
        """``head``: the header ``check_hnsw_file`` returned for ``path``; only a file that
        passed that check may come here (every count, id, level and the entry point in range).
        Banks of ``order_min_rows`` (default ORDER_MIN_ROWS) nodes or more are renumbered
        cluster by cluster."""
        faiss = faiss_module()
        order_min_rows = ORDER_MIN_ROWS if order_min_rows is None else int(order_min_rows)
        n, per, m0, maxm = head["n"], head["size_per_element"], head["maxM0"], head["maxM"]
        d0, lo = head["data_offset"], head["label_offset"]
        dim = (lo - d0) // 4
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, int(head["M"]))
        hn = index.hnsw
        cum = faiss.vector_to_array(hn.cum_nneighbor_per_level).astype(np.int64)
        if cum[1] != m0 or cum[2] - cum[1] != maxm:  # faiss lays out 2M level-0, M upper links
            raise Dn2Error(f"faiss HNSW layout {cum[:3].tolist()} does not fit M={head['M']}")
        levels = np.ones(n, np.int32)  # faiss counts levels from 1
        upper = {}
        with open(path, "rb") as f:
            f.seek(HNSW_HEADER.size + n * per)
            buf = f.read()
        off, block = 0, 4 + 4 * maxm
        for i in range(n):
            (ln,) = struct.unpack_from("<I", buf, off)
            off += 4
            if ln:
                lv = ln // block
                upper[i] = np.frombuffer(buf, "<u4", lv * (maxm + 1), off).reshape(lv, maxm + 1)
                levels[i] = lv + 1
                off += ln
        offsets = np.zeros(n + 1, np.uint64)
        offsets[1:] = np.cumsum(cum[levels])
        links = np.full(int(offsets[-1]), -1, np.int32)
        labels = np.empty(n, np.int64)
        rows = np.memmap(path, np.uint8, "r", offset=HNSW_HEADER.size, shape=(n, per))
        slots = np.arange(m0)
        for a in range(0, n, _CHUNK):
            r = np.array(rows[a : a + _CHUNK])
            count = r[:, 0:2].copy().view("<u2")[:, 0]
            ids = r[:, 4:d0].copy().view("<i4")
            ids[slots[None, :] >= count[:, None]] = -1
            at = offsets[a : a + len(r)].astype(np.int64)[:, None] + slots[None, :]
            links[at.ravel()] = ids.ravel()
            index.storage.add(np.ascontiguousarray(r[:, d0:lo].copy().view("<f4")))
            labels[a : a + len(r)] = r[:, lo : lo + 8].copy().view("<u8")[:, 0]
        for i, blk in upper.items():
            for li in range(blk.shape[0]):
                k, s = int(blk[li, 0] & 0xFFFF), int(offsets[i] + cum[li + 1])
                links[s : s + k] = blk[li, 1 : 1 + k]
        faiss.copy_array_to_vector(levels, hn.levels)
        faiss.copy_array_to_vector(offsets, hn.offsets)
        faiss.copy_array_to_vector(links, hn.neighbors)
        hn.entry_point, hn.max_level = int(head["enterpoint"]), int(head["maxlevel"])
        index.ntotal, index.is_trained = n, True
        if n >= order_min_rows:
            perm = cluster_order(index, faiss)
            index.permute_entries(perm)  # node i is now old node perm[i]
            labels = labels[perm]
        codes = faiss.downcast_index(index.storage).codes
        for vec in (hn.neighbors, codes):  # the two arrays every step of a walk reads
            advise_huge_pages(faiss.rev_swig_ptr(vec.data(), vec.size()))
        return cls(index, labels)

    @classmethod
    def from_hnswlib(cls, index) -> FaissWalker:
        """The walker of an hnswlib index built in this process (a fit): written to a temporary
        file, checked and parsed like a loaded one."""
        fd, tmp = tempfile.mkstemp(suffix=".bin", prefix="dn2-graph-")
        os.close(fd)
        try:
            index.save_index(tmp)
            return cls.from_hnsw_file(tmp, check_hnsw_file(tmp, index.dim))
        finally:
            os.unlink(tmp)

    def search(self, qy: np.ndarray, k: int, ef: int, threads: int = -1) -> np.ndarray:
        """Labels [nq, k] of the ``k`` graph candidates of each projected query (any order)."""
        nt = 1 if threads == 1 or len(qy) == 1 else (os.cpu_count() or 1)
        nt = nt if threads < 1 else min(nt, threads)
        ef = max(int(ef), int(k))
        if ef not in self._params:
            self._params[ef] = self._faiss.SearchParametersHNSW(efSearch=ef)
        prev = self._faiss.omp_get_max_threads()  # a process-wide setting: put it back after
        self._faiss.omp_set_num_threads(nt)
        try:
            _, ids = self.index.search(qy, int(k), params=self._params[ef])
        finally:
            self._faiss.omp_set_num_threads(prev)
        if (ids < 0).any():  # fewer than k nodes reached: as hnswlib, refuse rather than pad
            raise Dn2Error(
                f"the faiss graph walk reached fewer than {k} rows (ef {ef}); raise ef or M"
            )
        return self.labels[ids]
