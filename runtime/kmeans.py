"""k-means compression of the normal bank (paper 5.1): C centres replace the N embeddings.

Backend choice, measured on this project's shared 2-core machine with
``OMP_NUM_THREADS=2 python -m dn2.tools.bench.bank --kmeans --kmeans-n 50000 --kmeans-c 1000
--kmeans-repeats 1`` (Gaussian-mixture data, 50k x 2048 -> 1000 centres, the design's case; load
average ~5 from other jobs), both backends from the same seeded k-means++ centres:

* faiss-cpu ``faiss.Kmeans``, 10 Lloyd iterations:      52.5 s, inertia/n 2008.4   <- chosen
* scikit-learn ``MiniBatchKMeans`` (early-stopped):     58.8 s, inertia/n 2064.3
* faiss, 5 / 20 iterations (direct calls):              31.1 s / 96.1 s, 2015.1 / 2007.4

so faiss reaches a lower inertia in about half sklearn's time (5 iterations already beat
sklearn's result), and 10 iterations are within 0.05 % of 20. At 10k x 2048 -> 250 (quieter
machine, ``--kmeans-n 10000 --kmeans-c 250``, 20 iterations) faiss took 4.4-4.8 s against
sklearn's 7.1-8.3 s at equal inertia (within 1.6 %). Earlier, sklearn's own k-means++ init took
115 s at 20k x 2048 -> 500 and ``KMeans`` (Lloyd) over 300 s.

faiss also runs exact Lloyd steps (no mini-batch noise), is maintained by Meta, ships wheels for
x86-64 and aarch64 (Jetson) and needs nothing besides numpy (sklearn brings scipy and joblib).
Its own random init can leave clusters without a centre (20k x 2048 -> 500: inertia/n 516.7
against 498.6 when seeded), so centres are seeded by k-means++ (``_kmeanspp``, a dozen lines of
numpy, seeded) on a subsample of ``4 * C`` points. faiss is an optional extra,
``pip install 'dn2[kmeans]'``, because most edge boxes never compress; when it is missing and
scikit-learn is present (``dn2[tools]``), ``MiniBatchKMeans`` started from the same k-means++
centres is used instead. With neither: ``MissingExtraError`` naming ``dn2[kmeans]``.

Determinism: same data, C and seed -> same centres (k-means++ draws come from
``numpy.random.default_rng(seed)``; faiss's Lloyd steps are deterministic for a fixed init).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import Dn2Error, MissingExtraError

BACKENDS = ("auto", "faiss", "sklearn")
SUBSAMPLE_PER_CENTRE = 4  # k-means++ seeding looks at 4*C points: measured enough (docstring)
KMEANSPP_MAX_C = 2048  # seeding costs O(4 C^2 D); above this, seed with random points instead
N_ITER = 10  # seeded k-means++ converges fast: within 0.05 % of 20 steps (docstring)


@dataclass
class KMeansResult:
    centres: np.ndarray  # float32 [C, D]
    backend: str
    seconds: float
    inertia: float  # sum of squared distances of the points to their nearest centre

    def info(self) -> dict:
        return {
            "C": int(self.centres.shape[0]),
            "backend": self.backend,
            "seconds": round(self.seconds, 3),
            "inertia": self.inertia,
        }


def _kmeanspp(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on a random subsample of x; for
    c > KMEANSPP_MAX_C, c distinct random points (what faiss does by default)."""
    if c > KMEANSPP_MAX_C:
        return np.ascontiguousarray(
            x[np.sort(rng.choice(len(x), c, replace=False))], dtype=np.float32
        )
    m = min(len(x), max(c, SUBSAMPLE_PER_CENTRE * c))
    s = x[np.sort(rng.choice(len(x), m, replace=False))]
    sn = np.einsum("ij,ij->i", s, s).astype(np.float64)
    chosen = [int(rng.integers(m))]
    d2 = np.maximum(sn - 2.0 * (s @ s[chosen[0]]) + sn[chosen[0]], 0.0)
    for _ in range(c - 1):
        total = d2.sum()
        j = int(rng.choice(m, p=d2 / total)) if total > 0 else int(rng.integers(m))
        chosen.append(j)
        np.minimum(d2, np.maximum(sn - 2.0 * (s @ s[j]) + sn[j], 0.0), out=d2)
    return np.ascontiguousarray(s[chosen], dtype=np.float32)


def _inertia(x: np.ndarray, centres: np.ndarray) -> float:
    from .bank import ExactBank

    bank = ExactBank(centres.shape[1])
    bank.add(centres)
    d, _ = bank.search(x, 1)
    return float(d.sum())


def _faiss(x, c, seed, n_iter):
    import faiss  # optional extra dn2[kmeans]

    init = _kmeanspp(x, c, np.random.default_rng(seed))
    km = faiss.Kmeans(
        x.shape[1],
        c,
        niter=n_iter,
        seed=int(seed) & 0x7FFFFFFF,
        max_points_per_centroid=max(256, -(-len(x) // c)),
        min_points_per_centroid=1,
        verbose=False,
    )  # no stderr warning
    km.train(x, init_centroids=init)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _sklearn(x, c, seed, n_iter):
    from sklearn.cluster import MiniBatchKMeans

    init = _kmeanspp(x, c, np.random.default_rng(seed))  # same seeding as the faiss path
    km = MiniBatchKMeans(
        n_clusters=c,
        init=init,
        n_init=1,
        max_iter=n_iter,
        batch_size=4096,
        reassignment_ratio=0.0,  # keep seeded centres
        random_state=int(seed) & 0x7FFFFFFF,
    )
    km.fit(x)
    return np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)


def available_backend(backend: str = "auto") -> str:
    """The backend that will run: faiss if importable, else scikit-learn, else raise."""
    if backend not in BACKENDS:
        raise Dn2Error(f"k-means backend: expected one of {BACKENDS}, found {backend!r}")
    if backend in ("auto", "faiss"):
        try:
            import faiss  # noqa: F401

            return "faiss"
        except ImportError:
            pass
    if backend in ("auto", "sklearn"):
        try:
            import sklearn.cluster  # noqa: F401

            return "sklearn"
        except ImportError:
            pass
    missing = "scikit-learn" if backend == "sklearn" else "faiss"
    raise MissingExtraError(
        missing,
        "tools" if backend == "sklearn" else "kmeans",
        "k-means compression of the bank (--kmeans)",
    )


def kmeans(
    x, n_centres: int, seed: int = 0, backend: str = "auto", n_iter: int = N_ITER
) -> KMeansResult:
    """C = ``n_centres`` k-means centres of the rows of ``x`` (float32 [C, D])."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise Dn2Error(f"k-means input: expected [N, D], found shape {x.shape}")
    c = int(n_centres)
    if c < 1:
        raise Dn2Error(f"kmeans: expected at least 1 centre, found {c}", param="kmeans")
    if c > len(x):
        raise Dn2Error(
            f"kmeans {c}: expected at most as many centres as embeddings, "
            f"found {len(x)} embeddings",
            param="kmeans",
        )
    which = available_backend(backend)
    t0 = time.perf_counter()
    centres = (_faiss if which == "faiss" else _sklearn)(x, c, seed, n_iter)
    seconds = time.perf_counter() - t0
    return KMeansResult(centres, which, seconds, _inertia(x, centres))


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """Seeded assignment of n items to ``folds`` folds of near-equal size."""
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, np.int64)
    out[perm] = np.arange(n) % folds
    return out


def centres_without(
    x, n_centres: int, held_out: np.ndarray, seed: int, backend: str = "auto"
) -> np.ndarray:
    """Centres fitted on the rows of x not in ``held_out`` (bool mask), at most one per row."""
    rest = np.asarray(x)[~held_out]
    return kmeans(rest, min(int(n_centres), len(rest)), seed=seed, backend=backend).centres
