"""Scores (eq. 2), leave-one-out, cleaning, k-means, groups, thresholds — on synthetic data."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dn2.runtime import groups as G
from dn2.runtime.bank import build_bank
from dn2.runtime.errors import Dn2Error, MissingExtraError
from dn2.runtime.kmeans import available_backend, kmeans
from dn2.runtime.scoring import (
    clean,
    cov_trace,
    knn_score,
    l2normalize,
    loo_kmeans_scores,
    loo_scores,
    pool,
)
from dn2.runtime.threshold import (
    calibrate,
    conformal_quantile,
    f1_threshold,
    roc_auc,
    youden_threshold,
)
from dn2.tools.bench.bank import gaussian_mixture


def brute_knn(x, q, k, exclude_self=False):
    d = ((q[:, None].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(1)


def test_knn_score_is_mean_squared_l2_of_k_nearest():
    x, q = gaussian_mixture(300, 24, clusters=6, latent=6, n_queries=40)
    for k in (1, 2, 5):
        np.testing.assert_allclose(
            knn_score(build_bank(x, "exact"), q, k), brute_knn(x, q, k), rtol=1e-4
        )  # float32 norm trick vs float64 reference


def test_loo_never_uses_the_point_itself_even_with_duplicates():
    x, _ = gaussian_mixture(200, 16, clusters=5, latent=4)
    x = np.concatenate([x, x[:1]])  # row 200 duplicates row 0
    for kind in ("exact", "hnsw"):
        s = loo_scores(build_bank(x, kind), x, 1)
        assert s[0] == pytest.approx(0, abs=1e-3) and s[200] == pytest.approx(0, abs=1e-3)
        ref = brute_knn(x, x, 2, exclude_self=True)
        np.testing.assert_allclose(
            s[1:200], brute_knn(x, x, 1, exclude_self=True)[1:200], rtol=1e-3
        )
    s2 = loo_scores(build_bank(x, "exact"), x, 2)
    np.testing.assert_allclose(s2, ref, rtol=1e-3, atol=1e-3)


def test_cleaning_drops_the_planted_outliers():
    x, _ = gaussian_mixture(190, 32, clusters=4, latent=8, seed=2)
    far = np.random.default_rng(1).normal(0, 60, size=(10, 32)).astype(np.float32)  # scattered
    data = np.concatenate([x[:95], far, x[95:]])
    keep, dist = clean(data, 0.05, k=2)
    assert keep.sum() == 190
    assert not keep[95:105].any() and keep[:95].all() and keep[105:].all()
    assert dist[95:105].min() > dist[keep].max()
    with pytest.raises(Dn2Error, match=r"fraction in \[0, 1\), found 1.0"):
        clean(data, 1.0)


BACKENDS = [pytest.param("faiss", id="faiss"), pytest.param("sklearn", id="sklearn")]


def _need(backend):
    pytest.importorskip(
        "faiss" if backend == "faiss" else "sklearn.cluster",
        reason=f"k-means backend {backend} not installed",
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_is_seeded_and_reports_its_backend(backend):
    _need(backend)
    x, _ = gaussian_mixture(600, 16, clusters=8, latent=4, spread=3.0, seed=4)
    a, b = kmeans(x, 12, seed=3, backend=backend), kmeans(x, 12, seed=3, backend=backend)
    assert a.centres.shape == (12, 16) and a.centres.dtype == np.float32
    np.testing.assert_array_equal(a.centres, b.centres)
    assert a.backend == backend and a.inertia > 0
    # 8 true clusters, 12 centres: inertia must be near the noise floor, far below 1 centre's
    one = kmeans(x, 1, seed=3, backend=backend).inertia
    assert a.inertia < 0.2 * one
    with pytest.raises(Dn2Error, match="at most as many centres as embeddings, found 600"):
        kmeans(x, 601, backend=backend)


def test_missing_kmeans_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(MissingExtraError, match=r"dn2\[kmeans\]"):
        available_backend("auto")


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_loo_does_not_let_a_point_use_its_own_centre(backend):
    _need(backend)
    x, _ = gaussian_mixture(300, 16, clusters=3, latent=4, seed=6)
    outlier = x[:1] + 60.0
    data = np.concatenate([x, outlier])
    final = build_bank(kmeans(data, 80, seed=0, backend=backend).centres, "exact")
    naive = knn_score(final, data, 1)
    held = loo_kmeans_scores(data, 80, k=1, folds=5, seed=0, backend=backend)
    # with 80 centres (k-means++ seeding) the lone outlier owns one: naively it looks normal
    assert naive[-1] <= np.quantile(naive[:-1], 0.9)
    # k-fold: centres fitted without its fold never contain it -> far above every normal point
    assert held[-1] > 10 * np.quantile(held[:-1], 0.99)


def test_pooling_and_cov_trace():
    e = np.array([[1, 2, 3], [3, 2, 1], [2, 5, 2]], np.float32)
    np.testing.assert_allclose(pool(e, "mean"), [2, 3, 2])
    np.testing.assert_allclose(pool(e, "max"), [3, 5, 3])
    assert cov_trace(e) == pytest.approx(np.trace(np.cov(e.T)))
    assert cov_trace(e[:1]) == 0.0
    with pytest.raises(Dn2Error, match="expected one of"):
        pool(e, "median")
    np.testing.assert_allclose(np.linalg.norm(l2normalize(e), axis=1), 1.0, rtol=1e-6)


def test_group_loo_excludes_groups_sharing_an_image():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    members = [
        np.array([0, 1, 2]),
        np.array([0, 1, 3]),
        np.array([10, 11, 12]),
        np.array([20, 21, 22]),
        np.array([30, 31, 32]),
    ]
    pooled = G.pool_groups(x, members)
    s, n_nan = G.group_loo_scores(pooled, members, k=1)
    # group 1 shares two images with group 0 (its nearest pooled neighbour): excluded
    d01 = ((pooled[0] - pooled[1]) ** 2).sum()
    others = [((pooled[0] - pooled[j]) ** 2).sum() for j in (2, 3, 4)]
    assert s[0] == pytest.approx(min(others), rel=1e-4) and s[0] > d01 and n_nan == 0
    s3, n3 = G.group_loo_scores(pooled, members, k=4)  # groups 0/1 have only 3 disjoint ones
    assert n3 == 2 and np.isnan(s3[:2]).all() and np.isfinite(s3[2:]).all()


def test_sampled_groups_are_seeded_and_valid():
    a = G.sample_groups(50, 5, 20, seed=1)
    b = G.sample_groups(50, 5, 20, seed=1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert all(len(set(m.tolist())) == 5 and m.max() < 50 for m in a)
    with pytest.raises(Dn2Error, match="at most the number of normal images, found 4"):
        G.sample_groups(4, 5)


def test_conformal_threshold_holds_the_target_fpr_on_fresh_normals():
    rng = np.random.default_rng(0)
    cal, fresh = rng.gamma(3, size=2000), rng.gamma(3, size=200_000)
    t = conformal_quantile(cal, 0.05)
    assert t["rank"] == 1901 and not t["capped"]
    # finite-sample guarantee is on average over calibration sets; one set of 2000 scatters
    # by ~sqrt(0.05*0.95/2000) = 0.005, so 3 sigma = 0.015
    assert abs(np.mean(fresh > t["value"]) - 0.05) < 0.015
    small = conformal_quantile(cal[:20], 0.01)
    assert small["capped"] and small["value"] == cal[:20].max()


def test_youden_f1_and_calibrate_record_all_candidates():
    normal, anom = np.array([1.0, 2, 3, 4]), np.array([3.5, 5, 6])
    y = youden_threshold(normal, anom)  # t=3: J = 1 - 0.25 beats t=4: J = 2/3 - 0
    assert y["value"] == 3.0 and y["tpr"] == 1.0 and y["fpr"] == 0.25
    f = f1_threshold(normal, anom)  # t=3: F1 = 6/7 beats t=4: F1 = 4/5
    assert f["value"] == 3.0 and f["f1"] == pytest.approx(6 / 7)
    sep = np.array([4.5, 5, 6])
    assert youden_threshold(normal, sep)["value"] == 4.0 == f1_threshold(normal, sep)["value"]
    out = calibrate(np.arange(100.0), 0.05, normal, anom, method="youden", calibration="x")
    assert out["value"] == 3.0 and set(out["candidates"]) == {"fpr", "val-fpr", "youden", "f1"}
    assert out["val_normal_fpr"] == 0.25 and out["quantiles"]["0.5"] == pytest.approx(49.5)
    with pytest.raises(Dn2Error, match="needs scored val_normal and val_anomalous"):
        calibrate(np.arange(10.0), 0.1, method="f1")


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(5)
    n = rng.integers(0, 6, 40).astype(float)  # few distinct values: many ties
    a = rng.integers(2, 8, 30).astype(float)
    pairs = (a[:, None] > n[None, :]).sum() + 0.5 * (a[:, None] == n[None, :]).sum()
    assert roc_auc(n, a) == pytest.approx(pairs / (n.size * a.size), abs=1e-12)
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 1.0 and roc_auc([2.0, 3.0], [0.0, 1.0]) == 0.0
    with pytest.raises(Dn2Error, match="at least one score"):
        roc_auc([], [1.0])
