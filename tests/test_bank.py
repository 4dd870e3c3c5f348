"""kNN banks: exact (numpy, chunked norm trick) and HNSW (hnswlib), save/load, auto cut."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from dn2.runtime.bank import (
    EXACT_MAX_ELEMENTS,
    HNSW_DEFAULTS,
    BankError,
    ExactBank,
    HnswBank,
    build_bank,
    choose_kind,
    load_bank,
)
from dn2.tools.bench.bank import gaussian_mixture, recall_at


def brute(x, q, k):
    d = ((q[:, None, :].astype(np.float64) - x[None, :, :].astype(np.float64)) ** 2).sum(-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, 1), ids


def test_exact_matches_brute_force_with_chunking_over_queries_and_bank():
    x, q = gaussian_mixture(700, 48, clusters=20, latent=8, seed=1, n_queries=130)
    bank = ExactBank(48, max_block=64 * 50)  # forces many query chunks and bank chunks
    bank.add(x[:300])
    bank.add(x[300:])  # add appends: ids continue
    d, ids = bank.search(q, 5)
    bd, bids = brute(x, q, 5)
    assert d.dtype == np.float32 and ids.dtype == np.int64 and d.shape == (130, 5)
    assert np.array_equal(ids, bids)
    # float32 norm trick: error ~ eps32 * ||x||^2 (here ||x||^2 ~ 1e3) -> 1e-3 relative is ample
    np.testing.assert_allclose(d, bd, rtol=1e-3, atol=1e-2)
    assert np.all(np.diff(d, axis=1) >= 0)


def test_exact_clamps_self_distance_at_zero_and_is_exactly_ordered():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(50, 32)) * 100 + 500).astype(np.float32)  # large norms: cancellation
    bank = build_bank(x, "exact")
    d, ids = bank.search(x, 1)
    assert (d >= 0).all()
    assert np.array_equal(ids[:, 0], np.arange(50))


def test_exact_errors_say_expected_and_found():
    bank = build_bank(np.zeros((3, 4), np.float32), "exact")
    with pytest.raises(BankError, match="only 3 entries"):
        bank.search(np.zeros((1, 4)), 4)
    with pytest.raises(BankError, match="expected dimension 4, found 5"):
        bank.search(np.zeros((1, 5)), 1)
    with pytest.raises(BankError, match="finite"):
        bank.search(np.full((1, 4), np.nan), 1)
    with pytest.raises(BankError, match="at least one embedding"):
        build_bank(np.zeros((0, 4), np.float32))


def test_exact_save_load_roundtrip_and_no_pickles(tmp_path):
    x, q = gaussian_mixture(200, 16, clusters=5, latent=4, n_queries=10)
    bank = build_bank(x, "exact")
    p = tmp_path / "bank.npy"
    bank.save(p)
    again = load_bank(p, bank.params())
    assert np.array_equal(again.search(q, 3)[1], bank.search(q, 3)[1])
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BankError, match=r"expected a float32 \[N, D\] C-order array, found object"):
        load_bank(tmp_path / "obj.npy", {"kind": "exact"})
    with pytest.raises(
        BankError, match=r"manifest says \[201, 16\], the file declares \[200, 16\]"
    ):
        load_bank(p, dict(bank.params(), n=201))


def test_hnsw_defaults_hold_recall_at_2_on_structured_data():
    # Gaussian-mixture data with 128-d intrinsic structure (bench_bank's generator); 4000 x 256
    # keeps the single-threaded build to seconds. The defaults must keep recall@2 >= 0.99.
    x, q = gaussian_mixture(4000, 256, seed=3, n_queries=300)
    exact = build_bank(x, "exact")
    hnsw = build_bank(x, "hnsw")
    assert hnsw.params()["M"] == HNSW_DEFAULTS["M"] and hnsw.ef == HNSW_DEFAULTS["ef"]
    ed, ei = exact.search(q, 2)
    hd, hi = hnsw.search(q, 2)
    assert recall_at(ei, hi) >= 0.99
    # the data is hard enough to tell settings apart: a sparse graph searched with hnswlib's
    # default ef=10 misses neighbours on it
    weak = build_bank(x, "hnsw", M=4, ef_construction=20, ef=10)
    assert recall_at(ei, weak.search(q, 2)[1]) < 0.97
    hit = (ei == hi).all(1)
    # where the ids agree, hnswlib's squared L2 equals ours (float32 sums: 1e-4 relative)
    np.testing.assert_allclose(hd[hit], ed[hit], rtol=1e-4, atol=1e-3)


def test_hnsw_build_is_deterministic_and_load_reapplies_ef(tmp_path):
    x, q = gaussian_mixture(1500, 32, seed=5, n_queries=50)
    paths = []
    for i in range(2):
        b = HnswBank(32, M=8, ef_construction=40, ef=17, seed=7)
        b.add(x[:700])
        b.add(x[700:])  # growing the index keeps determinism
        paths.append(tmp_path / f"h{i}.bin")
        b.save(paths[-1])
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1, "same data + seed + single-threaded add must give the same graph"
    loaded = load_bank(paths[0], b.params())
    assert isinstance(loaded, HnswBank) and loaded.n == 1500
    assert loaded.ef == 17 and loaded._index.ef == 17  # recorded ef re-applied after load
    assert loaded.M == 8 and loaded.ef_construction == 40
    assert np.array_equal(loaded.search(q, 2)[1], b.search(q, 2)[1])
    # k larger than ef still works (ef raised to k for the query only)
    d, ids = loaded.search(q[:3], 30)
    assert ids.shape == (3, 30) and loaded._index.ef == 17
    np.testing.assert_allclose(loaded.vectors(), x, rtol=0, atol=0)


def test_auto_uses_the_benchmarked_size_cut():
    assert choose_kind("auto", 16384, 2048) == "exact"
    assert choose_kind("auto", 16385, 2048) == "hnsw"
    assert choose_kind("auto", EXACT_MAX_ELEMENTS // 512, 512) == "exact"
    assert choose_kind("exact", 10**7, 2048) == "exact"
    with pytest.raises(BankError, match="expected auto, exact or hnsw, found 'faiss'"):
        choose_kind("faiss", 10, 10)


def test_hnsw_file_must_agree_with_the_manifest_before_hnswlib_parses_it(tmp_path):
    # hnswlib itself loads an index of another dimension silently and reads garbage
    x, _ = gaussian_mixture(100, 32, seed=2)
    b = build_bank(x, "hnsw", M=8, ef_construction=20, ef=10)
    p = tmp_path / "bank.bin"
    b.save(p)
    with pytest.raises(BankError, match="expected dim 16, found room for 32 floats"):
        load_bank(p, dict(b.params(), dim=16))
    with pytest.raises(BankError, match="manifest says M=16, found M=8"):
        load_bank(p, dict(b.params(), M=16))
    (tmp_path / "short.bin").write_bytes(b"abc")
    with pytest.raises(BankError, match="header at least.*found 3 bytes"):
        load_bank(tmp_path / "short.bin", b.params())


def test_bench_bank_tool_runs_small(capsys):
    from dn2.tools.bench import bank as bench_bank

    assert (
        bench_bank.main(
            ["--sizes", "300", "--dim", "16", "--grid", "8:40:20", "--queries", "20", "--json"]
        )
        == 0
    )
    import json

    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in rows] == ["exact", "hnsw M=8 efc=40 ef=20"]
    assert rows[1]["recall@2"] >= 0.9 and rows[0]["n"] == 300
    assert (
        bench_bank.main(
            ["--kmeans", "--kmeans-n", "400", "--kmeans-c", "8", "--dim", "8", "--json"]
        )
        == 0
    )
    km = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert any("seconds" in r for r in km)


def test_small_queries_run_on_one_blas_thread_and_large_ones_keep_all():
    """Small queries (a camera frame, a batch) must not leave multi-threaded BLAS workers
    spinning over the next onnxruntime run; fit-sized query sets keep every thread."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from dn2.runtime.bank import SINGLE_THREAD_QUERIES, blas_threads

    def blas_threads_now():  # numpy's own BLAS: the one ExactBank's matmul runs on
        return [
            i["num_threads"]
            for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and "numpy" in i["filepath"]
        ]

    before = blas_threads_now()
    if not before:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl here")
    with blas_threads(1):
        assert blas_threads_now() == [1] * len(before)
    with blas_threads(SINGLE_THREAD_QUERIES):
        assert blas_threads_now() == [1] * len(before)
    with blas_threads(SINGLE_THREAD_QUERIES + 1):
        assert blas_threads_now() == before
    assert blas_threads_now() == before  # restored on exit


def test_exact_search_same_result_on_one_or_many_blas_threads():
    from dn2.runtime.bank import SINGLE_THREAD_QUERIES, ExactBank

    rng = np.random.default_rng(3)
    b = ExactBank(32)
    b.add(rng.standard_normal((500, 32)).astype(np.float32))
    q = rng.standard_normal((SINGLE_THREAD_QUERIES + 10, 32)).astype(np.float32)
    d_all, i_all = b.search(q, 2)  # one call above the cut: all threads
    d_one, i_one = b.search(q[:5], 2)  # below the cut: one thread
    np.testing.assert_array_equal(i_one, i_all[:5])
    # the same products summed in a different blocking order: float32 rounding only
    np.testing.assert_allclose(d_one, d_all[:5], rtol=1e-5, atol=1e-4)


def test_bench_blas_spin_tool_runs_every_variant_and_restores_the_cut(tmp_path, capsys):
    from dn2.runtime import bank as bank_mod
    from dn2.tools.bench import blas_spin as bench_blas_spin

    from textures import write_images
    from tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny.onnx")
    imgs = write_images(tmp_path / "imgs", 3, "normal", seed=0)
    cut = bank_mod.SINGLE_THREAD_QUERIES
    assert (
        bench_blas_spin.main(
            [str(model), *map(str, imgs), "--threads", "1", "--bank", "50", "--reps", "1"]
        )
        == 0
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == list(bench_blas_spin.VARIANTS)
    assert bank_mod.SINGLE_THREAD_QUERIES == cut


def test_bench_bank_scale_saves_resumes_and_reloads_a_graph(tmp_path, capsys):
    """bank_scale --save-index writes the graph (resuming an unfinished one from its
    checkpoint) and --load-index re-measures recall@2 from the saved file, no build."""
    import json

    import hnswlib

    from dn2.tools.bench import bank_scale as bs

    args = ["--n", "3000", "--dim", "32", "--workdir", str(tmp_path), "--queries", "50"]
    x = bs.write_bank(str(tmp_path / "bank_mixture_3000.npy"), 3000, bs.MixtureStream(32))
    part = hnswlib.Index(space="l2", dim=32)  # an interrupted build: the first 1000 rows
    part.init_index(max_elements=3000, M=8, ef_construction=40, random_seed=0)
    part.add_items(np.ascontiguousarray(x[:1000]), np.arange(1000), num_threads=1)
    saved = tmp_path / "hnsw_mixture_3000x32_M8_efc40.bin"
    part.save_index(str(saved) + ".partial")
    grid = ["--grid", "8:40", "--efs", "8", "64", "--save-index", "--reuse"]
    assert bs.main(args + grid) == 0
    out = capsys.readouterr()
    built = [json.loads(ln) for ln in out.out.splitlines()]
    assert "resuming" in out.err and "1000/3000 rows already" in out.err
    assert saved.exists() and not (tmp_path / (saved.name + ".partial")).exists()
    assert bs.main(args + ["--efs", "8", "64", "--load-index", str(saved)]) == 0
    again = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    # the same graph and the same stored queries and ground truth: the same recall
    assert [r["recall@2"] for r in again] == [r["recall@2"] for r in built]
    assert again[1]["recall@2"] >= 0.9 and again[0]["M"] == 8  # ef 64 of 3000 rows
    with pytest.raises(SystemExit):  # no ground truth saved for these queries: refused
        bs.main(args[:-1] + ["40", "--load-index", str(saved)])
    assert "no ground truth" in capsys.readouterr().err


def test_bench_bank_scale_measures_the_two_stage_bank(tmp_path, capsys):
    """bank_scale --project D: the graph over D principal axes, queries through the product's
    ProjectedHnswBank, one row per (ef, rerank); a saved projected graph re-measures alike."""
    import json

    from dn2.tools.bench import bank_scale as bs

    args = ["--n", "3000", "--dim", "64", "--workdir", str(tmp_path), "--queries", "50"]
    two = ["--project", "48", "--rerank", "4", "32", "--efs", "32"]
    assert bs.main(args + two + ["--grid", "8:40", "--save-index"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(r["ef"], r["rerank"], r["project"]) for r in rows] == [(32, 4, 48), (32, 32, 48)]
    # 48 of 64 axes of a 128-d latent: re-ranking 32 candidates finds what 4 cannot
    assert rows[1]["recall@2"] >= 0.9 and rows[1]["recall@2"] > rows[0]["recall@2"]
    assert all(r["worst_score_ratio"] >= 1 - 1e-4 for r in rows)  # exact ids, float32 rounding
    saved = tmp_path / "hnsw_mixture_3000x64p48_M8_efc40.bin"
    assert bs.main(args + two + ["--load-index", str(saved)]) == 0
    again = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["recall@2"] for r in again] == [r["recall@2"] for r in rows]


def test_fit_takes_the_large_bank_settings_past_the_cut(lite0_at, tmp_path, monkeypatch):
    """fit_bundle builds its bank with hnsw_params(n, dim): the defaults up to LARGE_BANK_ROWS
    rows, the two-stage bank above (the cut lowered here so a small fit crosses it); an
    explicit hnsw setting still wins, ``project: 0`` keeps one stage."""
    import json

    from dn2.runtime import bank as B
    from dn2.runtime.fit import fit_bundle

    assert B.hnsw_params(B.LARGE_BANK_ROWS, 1280) == HNSW_DEFAULTS
    model = lite0_at(96)
    x = gaussian_mixture(300, 1280, seed=0)[0]  # 300 rows: over the lowered cut of 200
    monkeypatch.setattr(B, "LARGE_BANK_ROWS", 200)
    big = B.hnsw_params(300, 1280)
    assert big["project"] == B.PROJECT_DIM and big["rerank"] == B.RERANK
    assert big["M"] == B.LARGE_BANK_M and big["ef"] == HNSW_DEFAULTS["ef"]
    for out, hnsw in (("big", None), ("mine", {"ef": 40}), ("one", {"project": 0})):
        b = fit_bundle(model, tmp_path / out, embeddings=x, index="hnsw", hnsw=hnsw, progress=False)
        params = json.loads((b / "dn2.json").read_text())["bank"]
        want = {**big, **(hnsw or {})}
        assert params["kind"] == "hnsw" and params["ef"] == want["ef"], params
        assert params["M"] == want["M"], params
        assert params.get("project") == (want["project"] or None), params
