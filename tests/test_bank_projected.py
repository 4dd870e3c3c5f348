"""The two-stage HNSW bank (runtime/bank_projected.py): a graph over a PCA projection of the
rows, candidates re-ranked exactly on the full rows; its files, manifest entry and checks."""

from __future__ import annotations

import hashlib
import json
import shutil

import cv2
import numpy as np
import pytest

from dn2.runtime.bank import ExactBank, HnswBank, build_bank, hnsw_params, load_bank
from dn2.runtime.bank_projected import ProjectedHnswBank, fit_projection, sibling
from dn2.runtime.bundle import BundleError, load_bundle
from dn2.runtime.detector import Detector
from dn2.runtime.errors import Dn2Error
from dn2.runtime.fit import fit_bundle
from dn2.tools.bench.bank import mixture

# float32 distances: the re-rank computes sum((x - q)^2), ExactBank the norm trick
# ||q||^2 - 2 q.x + ||x||^2; for squared distances of ~1e2-1e3 the two differ by ~1e-5 relative.
REL = 1e-4


def low_rank(n, dim=256, latent=24, seed=0, n_queries=0):
    """The benchmark's mixture with a 24-d latent: most variance in 24 axes, noise in the rest."""
    x, q, _ = mixture(n, dim, latent=latent, seed=seed, n_queries=n_queries)
    return x, q


def test_two_stage_search_matches_exact_and_never_scores_lower(tmp_path):
    x, q = low_rank(4000, n_queries=300)
    ex = ExactBank(x.shape[1])
    ex.add(x)
    two = build_bank(x, "hnsw", project=32, rerank=32)
    assert isinstance(two, ProjectedHnswBank) and two.graph.dim == 32
    ed, ei = ex.search(q, 2)
    td, ti = two.search(q, 2)
    recall = np.mean([len(set(a) & set(b)) / 2 for a, b in zip(ei.tolist(), ti.tolist())])
    assert recall >= 0.99, recall  # a 32-d graph over 24-d signal: the true pair is found
    same = ei == ti
    np.testing.assert_allclose(td[same], ed[same], rtol=REL)  # exact distances for the ids
    assert (td.mean(1) >= ed.mean(1) * (1 - REL)).all()  # a miss only raises a score
    # the projection: orthonormal axes, the mean of the rows
    p = two.proj
    np.testing.assert_allclose(p[1:] @ p[1:].T, np.eye(32), atol=1e-5)  # float32 axes
    np.testing.assert_allclose(p[0], x.mean(0), atol=1e-4)  # float64 mean stored as float32

    two.save(tmp_path / "bank.bin")
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "bank.bin",
        "bank.proj.npy",
        "bank.rows.npy",
    ]
    back = load_bank(tmp_path / "bank.bin", two.params())
    assert isinstance(back, ProjectedHnswBank) and isinstance(back.rows, np.memmap)
    bd, bi = back.search(q, 2)
    np.testing.assert_array_equal(bi, ti)
    np.testing.assert_array_equal(bd, td)
    # a one-row query and k beyond rerank still answer (ef and rerank widen to k)
    d1, i1 = back.search(q[0], 40)
    assert d1.shape == (1, 40) and np.all(np.diff(d1[0]) >= 0)


def test_project_zero_is_one_stage_and_bad_settings_are_refused():
    x, _ = low_rank(300)
    assert type(build_bank(x, "hnsw", project=0, rerank=16)) is HnswBank
    with pytest.raises(Dn2Error, match=r"project: expected 1 <= project < dim 256, found 256"):
        build_bank(x, "hnsw", project=256)
    with pytest.raises(Dn2Error, match="rerank: expected >= 1, found 0"):
        build_bank(x, "hnsw", project=8, rerank=0)
    with pytest.raises(Dn2Error, match="project"):
        fit_projection(x, 0)


def test_hnsw_params_turn_two_stage_past_the_large_bank_cut():
    from dn2.runtime import bank as B

    small = hnsw_params(B.LARGE_BANK_ROWS, 512)
    assert "project" not in small
    big = hnsw_params(B.LARGE_BANK_ROWS + 1, 512)
    assert big["project"] == B.PROJECT_DIM and big["rerank"] == B.RERANK
    assert big["M"] == B.LARGE_BANK_M  # the graph measured to hold 0.99 at 1M
    narrow = hnsw_params(B.LARGE_BANK_ROWS + 1, B.PROJECT_DIM)  # nothing to project away
    assert "project" not in narrow and narrow["ef"] == B.LARGE_BANK_EF


def test_malformed_projection_files_are_refused_with_a_clear_message(tmp_path):
    x, _ = low_rank(500)
    two = build_bank(x, "hnsw", project=16, rerank=16)
    params = two.params()
    two.save(tmp_path / "bank.bin")
    proj_path = sibling(tmp_path / "bank.bin", "proj")
    good = np.load(proj_path)

    def load_with(arr):
        np.save(proj_path, arr, allow_pickle=False)
        return load_bank(tmp_path / "bank.bin", params)

    with pytest.raises(
        Dn2Error, match=r"orthonormal projection axes .* found \|A A\^T - I\| up to"
    ):
        load_with(np.vstack([good[:1], 2 * good[1:]]))  # scaled axes
    bad = good.copy()
    bad[3, 5] = np.nan
    with pytest.raises(Dn2Error, match="expected a finite projection, found NaN"):
        load_with(bad)
    with pytest.raises(Dn2Error, match=r"manifest says \[17, 256\], the file declares \[16, 256\]"):
        load_with(good[:-1])
    with pytest.raises(Dn2Error, match="float32"):
        load_with(good.astype(np.float64))
    np.save(proj_path, good, allow_pickle=False)
    rows = sibling(tmp_path / "bank.bin", "rows")
    np.save(rows, x[:-1], allow_pickle=False)
    with pytest.raises(
        Dn2Error, match=r"manifest says \[500, 256\], the file declares \[499, 256\]"
    ):
        load_bank(tmp_path / "bank.bin", params)
    rows.unlink()
    with pytest.raises(Dn2Error, match="bank.rows.npy"):
        load_bank(tmp_path / "bank.bin", params)


def _redigest(bundle, name):
    """Re-write the manifest's digest of ``name`` (a crafted bundle, as an attacker without the
    signing key could make it): only the bank's own checks stand between it and a native loader."""
    m = json.loads((bundle / "dn2.json").read_text())
    m["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "dn2.json").write_text(json.dumps(m))


def camera_like(path, seed):
    """The image as a camera delivers it: 16:9 frame, sensor noise, JPEG at quality 70."""
    img = cv2.imread(str(path))
    h = img.shape[0]
    frame = cv2.resize(img, (h * 16 // 9, h))
    rng = np.random.default_rng(seed)
    noisy = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)


def test_real_fit_two_stage_bank_scores_as_the_exact_bank(lite0_at, textile_dirs, tmp_path):
    """Real Lite0 embeddings of real textile images: a two-stage bank (32 of 1280 dims, 24
    candidates re-ranked) scores held-out normal images, defects and camera-degraded frames as
    the exact bank does; the manifest records it and round-trips; damaged files are refused."""
    rng = np.random.default_rng(0)
    nominal = sorted(textile_dirs["nominal"].glob("*.jpg"))
    defects = sorted(textile_dirs["local"].glob("*.jpg")) + sorted(
        textile_dirs["global"].glob("*.jpg")
    )
    pick = rng.permutation(len(nominal))
    train = [str(nominal[i]) for i in pick[:160]]
    held = [str(nominal[i]) for i in pick[160:200]]
    bad = [str(defects[i]) for i in rng.choice(len(defects), 30, replace=False)]
    model = lite0_at(96)
    # the 160 stills alone (no camera variants): the two banks hold the same rows
    common = dict(images=train, k=2, threads=2, augment="none", progress=False)
    b_exact = fit_bundle(model, tmp_path / "exact", index="exact", **common)
    b_two = fit_bundle(
        model, tmp_path / "two", index="hnsw", hnsw={"project": 32, "rerank": 24}, **common
    )
    # manifest: recorded, digested, parsed back to the same typed reference
    raw = json.loads((b_two / "dn2.json").read_text())
    assert raw["bank"]["kind"] == "hnsw" and raw["bank"]["project"] == 32
    assert raw["bank"]["rerank"] == 24 and raw["bank"]["dim"] == 1280
    assert {"bank.bin", "bank.proj.npy", "bank.rows.npy"} <= set(raw["files"])
    loaded = load_bundle(b_two)
    assert isinstance(loaded.bank, ProjectedHnswBank) and loaded.bank.n == 160
    assert loaded.manifest.bank.hnsw["project"] == 32
    assert loaded.manifest.bank.to_dict() == {
        k: v for k, v in raw["bank"].items() if k in loaded.manifest.bank.to_dict()
    }
    de, dt = Detector.load(b_exact, threads=2), Detector.load(b_two, threads=2)
    frames = [camera_like(p, i) for i, p in enumerate(held[:10] + bad[:10])]
    se = np.concatenate([[r.score for r in de.score_paths(held + bad)], de.score_images(frames)])
    st = np.concatenate([[r.score for r in dt.score_paths(held + bad)], dt.score_images(frames)])
    assert np.isfinite(se).all() and len(se) == 90
    assert (st >= se * (1 - REL)).all()  # exact distances for the ids found: never lower
    close = np.isclose(st, se, rtol=REL)
    assert close.mean() >= 0.95, (close.mean(), np.max(st / se))  # 24 of 160 rows re-ranked
    # calibration ran through the two-stage bank: the same leave-one-out threshold
    te, tt = de.threshold, dt.threshold
    assert tt == pytest.approx(te, rel=0.02), (te, tt)  # a missed neighbour moves one score

    # an old bundle (one-stage hnsw, no project) still loads as HnswBank
    b_one = fit_bundle(model, tmp_path / "one", index="hnsw", hnsw={"project": 0}, **common)
    assert type(load_bundle(b_one).bank) is HnswBank
    assert "project" not in json.loads((b_one / "dn2.json").read_text())["bank"]

    # a crafted projection with a re-digested manifest: refused by the bank's own check
    crafted = tmp_path / "crafted"
    shutil.copytree(b_two, crafted)
    p = np.load(crafted / "bank.proj.npy")
    p[1:] *= 3.0
    np.save(crafted / "bank.proj.npy", p, allow_pickle=False)
    with pytest.raises(BundleError, match="bank.proj.npy"):  # the digest first
        load_bundle(crafted)
    _redigest(crafted, "bank.proj.npy")
    with pytest.raises(BundleError, match="orthonormal projection axes"):
        load_bundle(crafted)
    # the projection or rows dropped from the manifest's files: the schema refuses it
    m = json.loads((b_two / "dn2.json").read_text())
    del m["files"]["bank.rows.npy"]
    shutil.rmtree(crafted)
    shutil.copytree(b_two, crafted)
    (crafted / "dn2.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"files.bank.rows.npy: expected a digest"):
        load_bundle(crafted)


def test_bench_bank_ivf_reads_the_bank_scale_workdir(tmp_path, capsys):
    """bank_ivf: k-means lists over the projected rows, nprobe lists scanned, exact re-rank;
    more lists probed never finds fewer of the true pairs; refuses a workdir without truth."""
    from dn2.tools.bench import bank_ivf, bank_scale

    args = ["--n", "3000", "--dim", "64", "--workdir", str(tmp_path), "--queries", "50"]
    assert bank_scale.main(args + ["--grid", "8:40", "--efs", "16"]) == 0
    capsys.readouterr()
    ivf = ["--project", "48", "--lists", "30", "--nprobe", "1", "30", "--rerank", "16"]
    assert bank_ivf.main(args + ivf) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["nprobe"] for r in rows] == [1, 30]
    assert rows[1]["rows_scanned"] == 3000  # every list: the whole bank
    assert rows[1]["recall@2"] >= rows[0]["recall@2"]
    assert rows[1]["recall@2"] >= 0.9  # all rows scanned in 48 of 64 axes, 16 re-ranked
    assert all(r["worst_score_ratio"] >= 1 - REL for r in rows)  # exact distances: never lower
    with pytest.raises(SystemExit):
        bank_ivf.main(["--workdir", str(tmp_path / "none"), "--n", "10"])
    assert "not found" in capsys.readouterr().err
