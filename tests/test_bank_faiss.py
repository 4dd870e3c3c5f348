"""Engine faiss of the two-stage bank (runtime/bank_faiss.py): faiss walks the hnswlib graph
the bank saved, parsed from the checked file; same candidates, exact re-rank, old bundles
walked by hnswlib, a missing faiss named, a crafted graph refused before faiss sees it."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="pip install 'dn2[kmeans]'")

from dn2.runtime.bank import ExactBank, build_bank, load_bank  # noqa: E402
from dn2.runtime.bank_projected import ProjectedHnswBank  # noqa: E402
from dn2.runtime.bankfile import HNSW_HEADER, hnsw_header  # noqa: E402
from dn2.runtime.bundle import BundleError, load_bundle  # noqa: E402
from dn2.runtime.errors import Dn2Error  # noqa: E402
from dn2.runtime.fit import fit_bundle  # noqa: E402
from dn2.tools.bench.bank import mixture  # noqa: E402

REL = 1e-4  # float32 re-rank sum((x - q)^2) vs ExactBank's norm trick: ~1e-5 relative


def recall(a, b):
    return float(np.mean([len(set(r) & set(s)) / len(r) for r, s in zip(a.tolist(), b.tolist())]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A two-stage bank over 5000 rows of a 24-d-latent mixture in 256 dims, saved."""
    x, q, _ = mixture(5000, 256, latent=24, seed=3, n_queries=300)
    bank = ProjectedHnswBank(256, 32, rerank=24, M=16, ef_construction=100, ef=64)
    bank.engine = "hnswlib"
    bank.add(x)
    d = tmp_path_factory.mktemp("faiss_bank")
    bank.save(d / "bank.bin")
    return x, q, bank, d


def test_graph_ids_are_mapped_to_row_ids(saved, tmp_path):
    """A graph whose nodes were inserted out of row order (as a multi-threaded build does):
    faiss walks node numbers, the search returns the rows' ids (the file's labels)."""
    import hnswlib

    x, q, hn, _ = saved
    perm = np.random.default_rng(5).permutation(len(x))
    idx = hnswlib.Index(space="l2", dim=32)
    idx.init_index(max_elements=len(x), M=16, ef_construction=100, random_seed=1)
    idx.add_items(hn._reduce(x)[perm], perm, num_threads=1)  # node i holds row perm[i]
    idx.save_index(str(tmp_path / "perm.bin"))
    fb = ProjectedHnswBank.of_parts(
        hn.proj, x, idx, rerank=24, ef=64, engine="faiss", graph_file=tmp_path / "perm.bin"
    )
    np.testing.assert_array_equal(fb._walker.labels, perm)
    ex = ExactBank(256)
    ex.add(x)
    assert recall(ex.search(q, 2)[1], fb.search(q, 2)[1]) >= 0.99


def test_faiss_walks_the_saved_graph_as_hnswlib_does(saved):
    x, q, hn, d = saved
    params = {**hn.params(), "engine": "faiss"}
    fb = load_bank(d / "bank.bin", params)
    assert fb.engine == "faiss" and fb.graph._index is None  # hnswlib loaded nothing
    w = fb._walker
    np.testing.assert_array_equal(w.labels, np.arange(5000))  # one build thread: in order
    # the fp16 rows faiss walks are the graph's projected rows, in the file's order
    back = w.index.storage.reconstruct_n(0, 5000)
    np.testing.assert_allclose(back, fb._reduce(x)[w.labels], rtol=2e-3, atol=2e-3)  # fp16
    ex = ExactBank(256)
    ex.add(x)
    ed, ei = ex.search(q, 2)
    hd, hi = hn.search(q, 2)
    fd, fi = fb.search(q, 2)
    assert recall(ei, fi) >= 0.99, recall(ei, fi)  # 32 axes of 24-d signal, 24 re-ranked
    same = fi == hi
    # the same graph and the same ef: the same pair unless fp16 rounding reorders a near-tie
    # at the 24th candidate (measured: all 600 ids agree here)
    assert same.mean() >= 0.99, same.mean()
    np.testing.assert_allclose(fd[same], hd[same], rtol=REL)  # exact distances for the ids
    assert (fd.mean(1) >= ed.mean(1) * (1 - REL)).all()  # a miss can only raise a score
    # batched on 2 threads and one by one: the same answers; faiss's thread setting (process
    # wide: k-means uses it too) is left as it was
    before = faiss.omp_get_max_threads()
    one = np.concatenate([fb.search(r, 2, threads=1)[1] for r in q[:40]])
    np.testing.assert_array_equal(one, fi[:40])
    assert faiss.omp_get_max_threads() == before
    # a loaded faiss bank saves the graph file it walks, byte for byte
    fb.save(d / "copy.bin")
    assert (d / "copy.bin").read_bytes() == (d / "bank.bin").read_bytes()


def test_engine_auto_takes_faiss_and_records_it_old_params_walk_with_hnswlib(saved, tmp_path):
    x, q, hn, d = saved
    auto = build_bank(x[:3000], "hnsw", project=32, rerank=24, M=16, ef_construction=100)
    assert auto.engine == "faiss" and auto.params()["engine"] == "faiss"
    # a bank built here is walked by faiss too (its graph via a checked temporary file)
    ad, ai = auto.search(q, 2)
    ex = ExactBank(256)
    ex.add(x[:3000])
    assert recall(ex.search(q, 2)[1], ai) >= 0.99
    old = {k: v for k, v in hn.params().items() if k != "engine"}  # a bundle before engines
    back = load_bank(d / "bank.bin", old)
    assert back.engine == "hnswlib" and back.graph._index is not None
    with pytest.raises(Dn2Error, match="engine: expected one of auto, hnswlib, faiss"):
        build_bank(x[:500], "hnsw", project=8, engine="annoy")


def test_crafted_graph_is_refused_before_faiss_reads_it(saved, tmp_path):
    _, _, hn, d = saved
    shutil.copytree(d, tmp_path / "b", ignore=shutil.ignore_patterns("copy.bin"))
    path = tmp_path / "b" / "bank.bin"
    h = hnsw_header(path)
    raw = bytearray(path.read_bytes())
    at = HNSW_HEADER.size + 7 * h["size_per_element"] + 4  # element 7's first level-0 link
    struct.pack_into("<I", raw, at, 5000 + 9)  # past the last element: out of faiss's arrays
    path.write_bytes(bytes(raw))
    with pytest.raises(Dn2Error, match=r"element 7 links to 5009 on level 0"):
        load_bank(path, {**hn.params(), "engine": "faiss"})


def test_real_fit_records_faiss_and_scores_as_hnswlib_walks(lite0_at, textile_dirs, tmp_path):
    """A real fit (Lite0, real textile images) with a two-stage bank: the manifest records
    engine faiss; the bundle's graph walked by hnswlib gives the same neighbours; a bundle
    whose manifest names faiss on a box without faiss says which extra to install."""
    nominal = sorted(textile_dirs["nominal"].glob("*.jpg"))
    rng = np.random.default_rng(1)
    pick = rng.permutation(len(nominal))
    train = [str(nominal[i]) for i in pick[:120]]
    held = [str(nominal[i]) for i in pick[120:150]]
    model = lite0_at(96)
    out = fit_bundle(
        model,
        tmp_path / "two",
        images=train,
        k=2,
        threads=2,
        augment="none",
        progress=False,
        index="hnsw",
        hnsw={"project": 24, "rerank": 16},
    )
    raw = json.loads((out / "dn2.json").read_text())
    assert raw["bank"]["engine"] == "faiss" and raw["bank"]["project"] == 24
    loaded = load_bundle(out)
    assert loaded.manifest.bank.hnsw["engine"] == "faiss"
    bank = loaded.bank
    assert isinstance(bank, ProjectedHnswBank) and bank._walker is not None
    from dn2.runtime.detector import Detector

    det = Detector.load(out, threads=2)
    # held-out normal images as the bank sees them, and bank rows with a little noise
    emb = det._features(det.embedder.embed_images([cv2.imread(p) for p in held]))
    near = np.asarray(bank.rows[:60]) + rng.normal(0, 0.01, (60, bank.dim)).astype(np.float32)
    q = np.concatenate([np.asarray(emb, np.float32), near])
    hn = load_bank(out / "bank.bin", {**loaded.manifest.bank.params(), "engine": "hnswlib"})
    fd, fi = bank.search(q, 2)
    hd, hi = hn.search(q, 2)
    np.testing.assert_array_equal(fi, hi)  # 120 rows, 16 re-ranked: the same pair
    np.testing.assert_allclose(fd, hd, rtol=REL)
    scores = [r.score for r in det.score_paths(held)]
    assert np.isfinite(scores).all() and len(scores) == 30

    # without faiss: loading names the extra; fitting walks with hnswlib and says so
    code = (
        "import sys, logging; sys.modules['faiss'] = None\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from dn2.runtime.bundle import load_bundle\n"
        "from dn2.runtime.errors import Dn2Error\n"
        "from dn2.runtime.fit import fit_bundle\n"
        "try:\n"
        f"    load_bundle({str(out)!r})\n"
        "except Dn2Error as e:\n"
        "    print('LOAD:', e)\n"
        f"b = fit_bundle({str(model)!r}, {str(tmp_path / 'lean')!r}, images={train[:40]!r},\n"
        "    k=2, threads=2, augment='none', index='hnsw', hnsw={'project': 24, 'rerank': 16})\n"
        "import json; print('ENGINE:', json.load(open(b / 'dn2.json'))['bank']['engine'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "LOAD:" in p.stdout and "pip install 'dn2[kmeans]'" in p.stdout, p.stdout
    assert "ENGINE: hnswlib" in p.stdout
    assert "hnswlib walks the graph (pip install 'dn2[kmeans]'" in p.stderr
    assert "Traceback" not in p.stderr
    with pytest.raises(BundleError, match="engine"):  # a manifest naming an unknown engine
        m = json.loads((out / "dn2.json").read_text())
        m["bank"]["engine"] = "annoy"
        (tmp_path / "bad").mkdir()
        for f in out.iterdir():
            shutil.copy(f, tmp_path / "bad" / f.name)
        (tmp_path / "bad" / "dn2.json").write_text(json.dumps(m))
        load_bundle(tmp_path / "bad")


def _huge_kib(arr):
    """AnonHugePages of the mapping holding the middle of ``arr`` (its start may sit in a
    split-off 4 KiB mapping)."""
    addr, inside = arr.ctypes.data + arr.nbytes // 2, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1])
    return 0


def test_huge_page_advice_keeps_the_data_and_backs_it_with_huge_pages():
    """The walker's arrays are advised to 2 MiB pages (Linux): the bytes stay as they were;
    where the kernel accepted, the array's mapping reports huge pages in /proc/self/smaps."""
    from numpy._core.multiarray import _set_madvise_hugepage

    from dn2.runtime.bank_faiss import advise_huge_pages

    was = _set_madvise_hugepage(False)  # numpy advises its own large arrays: not this one
    try:
        arr = np.random.default_rng(0).random((1 << 22,), np.float64)  # 32 MiB, 4 KiB pages
    finally:
        _set_madvise_hugepage(was)
    before, huge_before = arr.copy(), _huge_kib(arr)
    ok = advise_huge_pages(arr)
    np.testing.assert_array_equal(arr, before)
    assert advise_huge_pages(arr[:100]) is False  # too small to be worth a huge page
    if not ok:
        return  # not Linux >= 6.1 with transparent huge pages: nothing more to check
    assert _huge_kib(arr) >= huge_before + 2048  # at least one more 2 MiB page


def test_bench_bank_load_reads_a_saved_graph_with_either_engine(tmp_path, capsys):
    """bank_load: the graph bank_scale saved, loaded as a bundle loads it, walked by faiss and
    by hnswlib: the same recall@2 (the same graph; fp16 only orders candidates)."""
    from dn2.tools.bench import bank_load, bank_scale

    w = str(tmp_path)
    args = ["--n", "3000", "--dim", "64", "--workdir", w, "--queries", "50"]
    scale = ["--project", "48", "--grid", "8:40", "--efs", "32", "--save-index"]
    assert bank_scale.main(args + scale) == 0
    capsys.readouterr()
    graph = str(tmp_path / "hnsw_mixture_3000x64p48_M8_efc40.bin")
    rows = {}
    for engine in ("faiss", "hnswlib"):
        load = ["--project", "48", "--graph", graph, "--engine", engine, "--efs", "32"]
        assert bank_load.main(args + load + ["--rerank", "16"]) == 0
        rows[engine] = json.loads(capsys.readouterr().out.splitlines()[0])
    assert rows["faiss"]["recall@2"] == rows["hnswlib"]["recall@2"] >= 0.9
    assert rows["faiss"]["worst_score_ratio"] >= 1 - REL  # exact distances: never lower
    with pytest.raises(SystemExit):
        bank_load.main(["--workdir", str(tmp_path / "none"), "--graph", graph])
    assert "not found" in capsys.readouterr().err


def test_cluster_order_renumbers_nodes_near_their_links_and_answers_the_same(saved):
    """Past ORDER_MIN_ROWS the walker renumbers nodes list by list (k-means): the same
    graph, so the same candidates, but a node's level-0 links now sit closer in memory."""
    from dn2.runtime.bank_faiss import FaissWalker
    from dn2.runtime.bankfile import check_hnsw_file

    x, q, hn, d = saved
    head = check_hnsw_file(d / "bank.bin", 32, 5000)
    plain = FaissWalker.from_hnsw_file(d / "bank.bin", head, order_min_rows=10**9)
    ordered = FaissWalker.from_hnsw_file(d / "bank.bin", head, order_min_rows=1000)
    assert sorted(ordered.labels.tolist()) == list(range(5000))
    assert not np.array_equal(ordered.labels, plain.labels)  # renumbered

    def link_gap(w):
        hn_ = w.index.hnsw
        nb = faiss.vector_to_array(hn_.neighbors)
        off = faiss.vector_to_array(hn_.offsets).astype(np.int64)
        m0 = int(faiss.vector_to_array(hn_.cum_nneighbor_per_level)[1])
        own = np.repeat(np.arange(5000), m0)
        lv0 = nb[(off[:-1, None] + np.arange(m0)[None, :]).ravel()]
        used = lv0 >= 0
        return float(np.median(np.abs(lv0[used] - own[used])))

    # 5 lists of ~1000 nodes over overlapping clusters: more links stay inside a list (median
    # id gap measured 623 against 1190 in file order; random order would give ~1460)
    assert link_gap(ordered) < 0.75 * link_gap(plain), (link_gap(ordered), link_gap(plain))
    qy = hn._reduce(q)
    a = np.sort(plain.search(qy, 24, 64), 1)
    b = np.sort(ordered.search(qy, 24, 64), 1)
    assert (a == b).all(1).mean() >= 0.99  # same graph and ef; only ties may resolve apart
