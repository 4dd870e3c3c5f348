"""k-means of a bank of a million in bounded memory (``bank_scale --kmeans-c C``)."""

from __future__ import annotations

import time

import numpy as np

from dn2.tools.bench.bank_scale import CHUNK, _mem


def kmeans_bounded(x: np.ndarray, c: int, sample: int, seed: int = 0, n_iter: int = 10) -> dict:
    """k-means of all N rows in bounded memory: faiss trains on a seeded sample of ``sample``
    rows (k-means++ seeded, as dn2.runtime.kmeans), then every row is assigned to its nearest
    centre chunk by chunk for the inertia; memory is the sample plus one chunk."""
    from dn2.runtime.kmeans import kmeans

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    idx = np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))
    xs = np.ascontiguousarray(x[idx])
    res = kmeans(xs, c, seed=seed, n_iter=n_iter)
    train = time.perf_counter() - t0
    from dn2.runtime.bank import ExactBank

    bank = ExactBank(x.shape[1])
    bank.add(res.centres)
    t1 = time.perf_counter()
    inertia = 0.0
    for i in range(0, len(x), CHUNK):
        d, _ = bank.search(np.asarray(x[i : i + CHUNK]), 1)
        inertia += float(d.sum())
    return {
        "C": c,
        "sample": int(len(xs)),
        "backend": res.backend,
        "train_s": round(train, 1),
        "assign_all_s": round(time.perf_counter() - t1, 1),
        "inertia_per_point_all": round(inertia / len(x), 4),
        "inertia_per_point_sample": round(res.inertia / len(xs), 4),
        **_mem(),
    }
