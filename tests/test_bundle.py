"""The bundle: atomic write, manifest contents, and every kind of damage refused clearly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dn2.runtime.bundle import MANIFEST, load_bundle, read_manifest
from dn2.runtime.detector import Detector
from dn2.runtime.errors import BundleError, Dn2Error
from dn2.runtime.fit import fit_bundle
from dn2.tools.bench.bank import gaussian_mixture

from tiny_model import make_tiny_model

DIM = 64


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", dim=DIM)


@pytest.fixture(scope="module")
def data():
    return gaussian_mixture(300, DIM, clusters=5, latent=8, seed=0, n_queries=50)


def fit(model, out, x, **kw):
    return fit_bundle(model, out, embeddings=x, progress=False, **kw)


def test_manifest_records_everything(model, data, tmp_path):
    x, _ = data
    out = fit(
        model,
        tmp_path / "b",
        x,
        k=3,
        l2norm=True,
        fpr=0.05,
        index="hnsw",
        names=[f"img{i}" for i in range(len(x))],
    )
    m = json.loads((out / MANIFEST).read_text())
    assert m["schema"] == "dn2-bundle" and m["schema_version"] == 2 and m["dn2_version"]
    assert m["model"]["file"] == "model.onnx" and m["model"]["dim"] == DIM
    assert m["model"]["arch"] == "tiny" and m["model"]["input"] == 32
    b = m["bank"]
    assert b["kind"] == "hnsw" and b["file"] == "bank.bin" and b["n"] == 300
    assert b["metric"] == "sqeuclidean" and b["M"] == 32 and b["ef"] == 128
    assert b["ef_construction"] == 200 and len(b["sha256"]) == 64
    assert m["score"] == {
        "k": 3,
        "reduction": "mean",
        "l2norm": True,
        "jpeg_draft": False,
        "color": "color",
        "mode": "global",
        "combine": "max",
    }
    t = m["threshold"]
    assert t["method"] == "fpr" and t["fpr"] == 0.05 and "0.99" in t["quantiles"]
    # the stored normal rows (embeddings.*) are what fit --append refits from
    assert set(m["files"]) == {
        "model.onnx",
        "bank.bin",
        "fit_report.json",
        "embeddings.npy",
        "embeddings.json",
    }
    assert m["fit"]["images"] == 300 and m["fit"]["dropped"] == 0 and m["group"] is None
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temp dir left behind"
    # the exact bank file is a plain .npy that loads without pickles
    out2 = fit(model, tmp_path / "e", x, index="exact")
    arr = np.load(out2 / "bank.npy", allow_pickle=False)
    assert arr.shape == (300, DIM) and arr.dtype == np.float32


def test_detector_scores_embeddings_like_the_bank(model, data, tmp_path):
    x, q = data
    out = fit(model, tmp_path / "b", x, k=2, l2norm=False)  # the paper's plain distance
    det = Detector.load(out, load_model=False)
    s = det.score_embeddings(q)
    d = ((q[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    ref = np.sort(d, 1)[:, :2].mean(1)
    np.testing.assert_allclose(s, ref, rtol=1e-4)  # float32 norm trick vs float64
    assert (det.predict(q) == (s > det.threshold)).all()
    # threshold: the conformal 0.99 quantile of the leave-one-out training scores
    d_tr = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d_tr, np.inf)
    loo = np.sort(np.sort(d_tr, 1)[:, :2].mean(1))
    assert det.threshold == pytest.approx(loo[int(np.ceil(301 * 0.99)) - 1], rel=1e-4)


def test_rewrite_replaces_an_existing_bundle_atomically(model, data, tmp_path):
    x, _ = data
    out = fit(model, tmp_path / "b", x, k=2)
    fit(model, out, x, k=4)
    assert read_manifest(out).score.k == 4
    assert sorted(os.listdir(tmp_path)) == ["b"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="folder with other files"):
        fit(model, other, x)
    assert (other / "keep.txt").read_text() == "mine"


@pytest.fixture
def bundle(model, data, tmp_path):
    return fit(model, tmp_path / "b", data[0], group_size=4, n_groups=60)


def _edit_manifest(path, fn):
    m = json.loads((path / MANIFEST).read_text())
    fn(m)
    (path / MANIFEST).write_text(json.dumps(m))


def test_bundle_without_jpeg_draft_loads_as_full_decode(bundle):
    # schema-1 bundles written before score.jpeg_draft existed decode files at full size
    _edit_manifest(bundle, lambda m: (m["score"].pop("jpeg_draft"), m.update(schema_version=1)))
    assert Detector.load(bundle).embedder.jpeg_draft is False
    _edit_manifest(bundle, lambda m: m.update(schema_version=2))  # schema 2 names every choice
    with pytest.raises(
        BundleError, match="score.jpeg_draft: expected true or false, found nothing"
    ):
        Detector.load(bundle)
    _edit_manifest(bundle, lambda m: m["score"].update(jpeg_draft=True))
    assert Detector.load(bundle).embedder.jpeg_draft is True


def test_tampered_bank_is_refused_with_expected_and_found(bundle):
    with open(bundle / "bank.npy", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(BundleError, match=r"bank.npy: expected sha256 [0-9a-f]{64}, found"):
        load_bundle(bundle)


def test_tampered_model_is_refused(bundle):
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="model.onnx: expected sha256"):
        Detector.load(bundle)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda m: m.update(schema_version=3),
            r"expected schema_version 2 \(or 1, converted on read\), found 3 .*refit it with "
            r"this dn2: dn2 fit MODEL.onnx NORMAL_IMAGES --output BUNDLE",
        ),
        (
            lambda m: m["score"].pop("color"),
            "score.color: expected 'gray' or 'color', found nothing",
        ),
        (lambda m: m.update(schema="other"), "expected schema 'dn2-bundle', found 'other'"),
        (lambda m: m["bank"].update(dim=65), "bank.dim: expected the model's dim 64, found 65"),
        (lambda m: m["bank"].update(metric="cosine"), "expected 'sqeuclidean', found 'cosine'"),
        (lambda m: m["score"].update(k=301), r"score.k: expected an integer in \[1, bank.n=300\]"),
        (lambda m: m["score"].update(jpeg_draft="yes"), "score.jpeg_draft: expected true or false"),
        (
            lambda m: m["bank"].update(n=299),
            r"manifest says \[299, 64\], the file declares \[300, 64\]",
        ),
        (lambda m: m["threshold"].update(value=None), "threshold.value: expected a finite number"),
        (lambda m: m["group"].update(pooling="median"), "group.pooling: expected 'mean' or 'max'"),
        (lambda m: m["files"].update({"../x": "0" * 64}), "expected plain file names"),
        (lambda m: m.pop("threshold"), "expected a 'threshold' section"),
    ],
)
def test_inconsistent_manifest_is_refused(bundle, edit, message):
    _edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_model_metadata_must_match_the_manifest(bundle):
    _edit_manifest(bundle, lambda m: m["model"].update(arch="resnet101"))
    with pytest.raises(BundleError, match="manifest expects 'resnet101', model.onnx says 'tiny'"):
        Detector.load(bundle)


def test_half_written_and_missing_bundles_get_clear_messages(bundle, tmp_path):
    (bundle / "group_bank.npy").unlink()
    with pytest.raises(BundleError, match="group_bank.npy .*missing: half-written"):
        load_bundle(bundle)
    (bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match="expected dn2.json, found only .* half-written"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="found no such path"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="an empty folder; run dn2-fit first"):
        load_bundle(tmp_path / "empty")
    (bundle / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="expected dn2.json to be JSON"):
        load_bundle(bundle)


def test_l2norm_bundle_normalises_queries_too(model, data, tmp_path):
    x, q = data
    det = Detector.load(fit(model, tmp_path / "n", x, k=2, l2norm=True), load_model=False)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    ref = np.sort(((qn[:, None].astype(np.float64) - xn[None]) ** 2).sum(-1), 1)[:, :2].mean(1)
    # unit vectors: squared distances in [0, 4], float32 error ~1e-6 absolute
    np.testing.assert_allclose(det.score_embeddings(q * 7.5), ref, rtol=1e-4, atol=1e-5)
    assert det.l2norm and det.score_embeddings(q).max() <= 4.0 + 1e-5


def _norm_or_direction_world(signal: str, dim: int = 16, seed: int = 0):
    """Normals: one direction, lengths spread 1..4. Anomalies carry the signal either in their
    length (same direction, 8x longer) or in their direction (other direction, normal lengths)."""
    rng = np.random.default_rng(seed)
    u, v = np.eye(dim)[0], np.eye(dim)[1]

    def normal(n):
        return rng.uniform(1, 4, (n, 1)) * (u + 0.05 * rng.standard_normal((n, dim)))

    def anomalous(n):
        if signal == "length":
            return 8 * normal(n)
        return rng.uniform(1, 4, (n, 1)) * (
            0.8 * u + 0.6 * v + 0.05 * rng.standard_normal((n, dim))
        )

    return [x.astype(np.float32) for x in (normal(200), normal(40), anomalous(40))]


@pytest.mark.parametrize("signal, chosen", [("length", False), ("direction", True)])
def test_l2norm_select_picks_by_validation_auroc(model, tmp_path, signal, chosen):
    from dn2.runtime.modelmeta import read_model_meta

    dim = read_model_meta(str(model)).dim
    x, vn, va = _norm_or_direction_world(signal, dim)
    out = fit(model, tmp_path / signal, x, l2norm="auto", val_normal=vn, val_anomalous=va)
    m = json.loads((out / MANIFEST).read_text())
    sel = m["fit"]["l2norm_selection"]
    assert m["score"]["l2norm"] is chosen and sel["chosen"] is chosen
    # the chosen variant separates the validation sets better than the other one
    better, worse = (
        (sel["val_auroc_l2norm"], sel["val_auroc_plain"])
        if chosen
        else (sel["val_auroc_plain"], sel["val_auroc_l2norm"])
    )
    assert better > worse and better > 0.9


def test_l2norm_select_needs_both_validation_sets(model, data, tmp_path):
    x, q = data
    with pytest.raises(Dn2Error, match="l2norm 'auto': expected val_normal and val_anomalous"):
        fit(model, tmp_path / "x", x, l2norm="auto", val_normal=q)
    assert not (tmp_path / "x").exists()
