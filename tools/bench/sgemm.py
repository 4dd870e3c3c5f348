"""This machine's measured fp32 matrix-multiply (sgemm) peak, the yardstick for the model stage.

numpy's BLAS (OpenBLAS in the wheels) multiplies square float32 matrices at a fixed thread
count; the best run over a few sizes is the peak. FLOPs are counted as 2*n^3 per product.
"""

from __future__ import annotations

import time
from typing import Dict, Sequence

import numpy as np

DEFAULT_SIZES = (1024, 1536, 2048)
QUICK_SIZES = (1024, 1536)


def _best_seconds(a: np.ndarray, b: np.ndarray, out: np.ndarray, repeats: int) -> float:
    np.matmul(a, b, out=out)  # warm-up: BLAS thread start, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_sgemm_peak(
    threads: int, sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 5, seed: int = 0
) -> Dict[str, object]:
    """Best sgemm GFLOP/s with numpy's BLAS limited to ``threads`` threads.

    Returns ``{"threads", "gflops", "per_size": {n: gflops}, "blas"}``.
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    if threads < 1:
        raise ValueError(f"threads must be >= 1, found {threads}")
    rng = np.random.default_rng(seed)
    per_size: Dict[str, float] = {}
    with threadpool_limits(limits=threads, user_api="blas"):
        blas = [
            f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ]
        for n in sizes:
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            out = np.empty((n, n), dtype=np.float32)
            secs = _best_seconds(a, b, out, repeats)
            per_size[str(n)] = round(2.0 * n**3 / secs / 1e9, 2)
    return {
        "threads": threads,
        "gflops": max(per_size.values()),
        "per_size": per_size,
        "blas": "; ".join(sorted(set(blas))),
    }
