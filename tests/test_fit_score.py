"""dn2-fit / dn2-score end to end on real files and a real (tiny) onnxruntime model."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from dn2.runtime import fit_cli, score_cli
from dn2.runtime.bundle import load_bundle
from dn2.runtime.detector import Detector
from dn2.runtime.fit import fit_bundle

from textures import write_images
from tiny_model import make_tiny_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    model = make_tiny_model(root / "tiny.onnx")
    normal = root / "normal"
    write_images(normal, 60, "normal", seed=1)
    (normal / "broken.jpg").write_text("this is text, not a JPEG")
    (normal / "notes.txt").write_text("not an image")
    test_n = write_images(root / "test_normal", 10, "normal", seed=2)
    test_a = write_images(root / "test_anom", 10, "anomalous", seed=3)
    bundle = root / "bundle"
    rc = fit_cli.main(
        [
            str(model),
            str(normal),
            "--output",
            str(bundle),
            "--group-size",
            "5",
            "--groups",
            "200",
            "--fpr",
            "0.05",
            "--quiet",
        ]
    )
    assert rc == 0
    return dict(root=root, model=model, normal=normal, bundle=bundle, test_n=test_n, test_a=test_a)


def _json_lines(out: str):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_fit_skips_and_records_bad_files(world):
    b = load_bundle(world["bundle"])
    m, rep = b.manifest, b.report()
    assert m.fit.images == 60 and m.fit.failed == 2
    failed = dict((p.split("/")[-1], msg) for p, msg in rep["failed"])
    assert set(failed) == {"broken.jpg", "notes.txt"} and "expected" in failed["broken.jpg"]
    # the bank's rows: the 60 images, then (the default for stills) a camera variant of each
    stills = [n for n in rep["kept"] if not n.endswith(" (camera variant)")]
    assert len(stills) == 60 and len(rep["kept"]) == 60 + m.fit.augment["variants"] == 120
    assert m.group.size == 5 and m.group.n_groups == 200
    assert m.score.l2norm is True  # the default (BENCHMARKS.md: +1.0 pt Fashion-MNIST)


def test_no_l2norm_flag_scores_plain_euclidean(world, tmp_path):
    out = tmp_path / "plain"
    rc = fit_cli.main(
        [str(world["model"]), str(world["normal"]), "--output", str(out), "--no-l2norm", "--quiet"]
    )
    assert rc == 0
    plain = Detector.load(out, load_model=False)
    normed = Detector.load(world["bundle"], load_model=False)
    assert plain.manifest.score.l2norm is False and normed.l2norm
    q = np.random.default_rng(0).standard_normal((4, plain.dim)).astype(np.float32)
    # L2-normalised scoring ignores a query's scale; the plain distance does not
    np.testing.assert_allclose(
        normed.score_embeddings(10 * q), normed.score_embeddings(q), rtol=1e-5
    )  # float32 rounding of the normalisation
    assert (plain.score_embeddings(10 * q) > 2 * plain.score_embeddings(q)).all()


def test_l2norm_select_flag_records_the_choice(world, tmp_path, capsys):
    out = tmp_path / "sel"
    rc = fit_cli.main(
        [
            str(world["model"]),
            str(world["normal"]),
            "--output",
            str(out),
            "--l2norm-select",
            "--val-normal",
            *map(str, world["test_n"]),
            "--val-anomalous",
            *map(str, world["test_a"]),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    sel = load_bundle(out).manifest.fit.l2norm_selection
    assert sel["val_normal"] == 10 and sel["val_anomalous"] == 10
    assert load_bundle(out).manifest.score.l2norm is sel["chosen"]
    assert "--l2norm-select: validation ROC-AUC" in err
    rc = fit_cli.main(
        [
            str(world["model"]),
            str(world["normal"]),
            "--output",
            str(tmp_path / "no"),
            "--l2norm-select",
            "-q",
        ]
    )
    assert rc == 2 and "expected --val-normal and --val-anomalous" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_score_json_lines_flag_anomalies_and_report_bad_files(world, capsys, tmp_path):
    bad = tmp_path / "zero.png"
    bad.write_bytes(b"")
    paths = [str(p) for p in world["test_n"] + world["test_a"]] + [str(bad)]
    rc = score_cli.main([str(world["bundle"]), *paths, "--json"])
    lines = _json_lines(capsys.readouterr().out)
    assert rc == 1  # one input could not be scored
    assert all(
        set(r) == {"path", "score", "threshold", "anomalous", "error", "norm_score"} for r in lines
    )
    by = {r["path"]: r for r in lines}
    assert by[str(bad)]["score"] is None and "empty" in by[str(bad)]["error"]
    anom = [by[str(p)] for p in world["test_a"]]
    norm = [by[str(p)] for p in world["test_n"]]
    assert all(r["anomalous"] and r["error"] is None for r in anom)
    # fpr 0.05 on 10 fresh normals: more than 3 false alarms would be a 1-in-1000 event
    assert sum(r["anomalous"] for r in norm) <= 3
    assert min(r["score"] for r in anom) > max(r["score"] for r in norm)


def test_score_exit_codes_and_text_output(world, capsys):
    rc = score_cli.main([str(world["bundle"]), str(world["test_n"][0])])
    out = capsys.readouterr().out
    assert rc == 0 and str(world["test_n"][0]) in out and ("normal" in out or "ANOM" in out)
    rc = score_cli.main([str(world["root"] / "nope"), str(world["test_n"][0])])
    err = capsys.readouterr().err
    assert rc == 2 and "no such path" in err and "Traceback" not in err
    assert score_cli.main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out
    assert score_cli.main([str(world["bundle"])]) == 2  # usage: no PATH


def test_group_scoring_separates_mixed_sets(world, capsys):
    det = Detector.load(world["bundle"])
    normal_g = det.score_group_paths(world["test_n"][:5])
    anom_g = det.score_group_paths(world["test_a"][:5])
    assert normal_g.n_images == 5 and not normal_g.errors
    assert anom_g.anomalous and anom_g.score > normal_g.score
    assert anom_g.score > det.group_threshold
    ct_n = det.score_group_paths(world["test_n"][:5], statistic="cov_trace")
    ct_a = det.score_group_paths(world["test_n"][:3] + world["test_a"][:2], statistic="cov_trace")
    assert ct_a.score > ct_n.score  # a mixed set spreads more (paper 4.5)
    rc = score_cli.main([str(world["bundle"]), *map(str, world["test_a"][:5]), "--group", "--json"])
    (line,) = _json_lines(capsys.readouterr().out)
    assert rc == 0 and line["anomalous"] is True and len(line["paths"]) == 5


def test_group_dirs_clean_kmeans_and_validation(world, tmp_path, capsys):
    groups = tmp_path / "groups"
    imgs = sorted(world["normal"].glob("*.png"))
    for g in range(12):
        d = groups / f"g{g:02d}"
        d.mkdir(parents=True)
        for p in imgs[g * 4 : (g + 1) * 4]:
            shutil.copy(p, d / p.name)
    train = tmp_path / "train"
    shutil.copytree(world["normal"], train)
    for p in world["test_a"][5:8]:  # 3 anomalies hidden in the training set
        shutil.copy(p, train / p.name)
    out = fit_bundle(
        world["model"],
        tmp_path / "b",
        images=[str(train)],
        clean=0.1,
        kmeans=20,
        group_dirs=[str(groups)],
        k=2,
        val_normal=[str(p) for p in world["test_n"]],
        val_anomalous=[str(p) for p in world["test_a"][:5]],
        threshold_method="youden",
        progress=True,
    )
    err = capsys.readouterr().err
    b = load_bundle(out)
    m, rep = b.manifest, b.report()
    dropped = {d["name"].split("/")[-1] for d in rep["dropped"]}
    assert {p.name for p in world["test_a"][5:8]} <= dropped  # cleaning found the planted ones
    assert m.fit.dropped == 6 and all(f"dropped {d['name']}" in err for d in rep["dropped"])
    assert m.bank.n == 20 and m.bank.contents == "kmeans-centres"
    assert m.fit.kmeans["C"] == 20 and m.fit.kmeans["folds"] == 5
    assert m.threshold.method == "youden"
    assert set(m.threshold.candidates) == {"fpr", "val-fpr", "youden", "f1"}
    assert m.group.source == "dirs" and m.group.n_groups == 12
    det = Detector.load(out)
    res = det.score_paths([str(p) for p in world["test_a"][:5]])
    assert all(r.anomalous for r in res)


def test_fit_refuses_too_few_images_saying_how_many(world, tmp_path, capsys):
    few = tmp_path / "few"
    write_images(few, 2, "normal")
    (few / "bad.png").write_bytes(b"\x89PNG\r\n")
    rc = fit_cli.main([str(world["model"]), str(few), "--output", str(tmp_path / "b"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "needs at least 3 good normal images" in err and "found 2 (1 bad files" in err
    assert not (tmp_path / "b").exists()
    rc = fit_cli.main(
        [str(world["model"]), str(few), "--output", str(tmp_path / "b"), "--clean", "0.5", "-q"]
    )
    assert rc == 2 and "at least 5 good normal images" in capsys.readouterr().err
    assert fit_cli.main([str(world["model"]), "--output", "x"]) == 2  # usage


def test_score_images_and_embeddings_agree(world):
    import cv2

    det = Detector.load(world["bundle"])
    imgs = [cv2.imread(str(p)) for p in world["test_a"][:3]]
    a = det.score_images(imgs)
    b = det.score_embeddings(det.embedder.embed_images(imgs))
    c = [r.score for r in det.score_paths(world["test_a"][:3])]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # PNG round trip is lossless, so file and array paths see identical pixels
    np.testing.assert_allclose(a, c, rtol=1e-5)
    assert det.predict(imgs).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fpr", "1.5"], r"--fpr: expected a rate in \(0, 1\), found 1.5"),
        (["--clean", "1"], r"--clean: expected a fraction in \[0, 1\), found 1.0"),
        (["--kmeans", "1", "--k", "2"], "--kmeans 1: expected at least k=2 centres"),
        (["--threshold-method", "youden"], "expected --val-normal images, found none"),
        (["--group-size", "0"], "--group-size: expected >= 1, found 0"),
    ],
)
def test_bad_settings_are_refused_before_embedding(world, tmp_path, capsys, args, message):
    rc = fit_cli.main(
        [
            str(world["model"]),
            str(world["root"] / "no-such-folder"),
            "--output",
            str(tmp_path / "b"),
            "-q",
            *args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err), err


def test_jpeg_draft_is_recorded_at_fit_and_followed_at_score(world, tmp_path, capsys):
    import cv2

    from dn2.runtime.images import draft_side_for, read_image

    from textures import texture

    # tiny model: input 32, resize to 37, draft side 47 -> 192 px JPEGs decode at 1/4 (48 px)
    rng = np.random.default_rng(5)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(30):
        img = cv2.resize(texture(rng, "normal"), (192, 192), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(big / f"n{i:02d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    out = tmp_path / "draft"
    assert (
        fit_cli.main([str(world["model"]), str(big), "--output", str(out), "--jpeg-draft", "-q"])
        == 0
    )
    assert load_bundle(out).manifest.score.jpeg_draft is True
    assert load_bundle(world["bundle"]).manifest.score.jpeg_draft is False
    det = Detector.load(out)
    assert det.embedder.jpeg_draft is True  # follows the bundle ...
    assert Detector.load(out, jpeg_draft=False).embedder.jpeg_draft is False  # ... unless told
    files = sorted(big.glob("*.jpg"))[:4]
    full_det = Detector.load(out, jpeg_draft=False)
    e_draft = det.embedder.embed_paths(files).embeddings
    e_full = full_det.embedder.embed_paths(files).embeddings
    side = draft_side_for(det.embedder.rule)
    ref = det.embedder.embed_images([read_image(str(p), draft_side=side) for p in files])
    np.testing.assert_allclose(e_draft, ref, rtol=1e-6, atol=1e-7)  # same pixels, same session
    assert np.abs(e_draft - e_full).max() > 1e-4  # 48 px decode vs 192 px: other pixels
    drafted = [r.score for r in det.score_paths(files)]
    full = [r.score for r in full_det.score_paths(files)]
    assert drafted != full
    capsys.readouterr()
    for flag, expected in (([], drafted), (["--no-jpeg-draft"], full)):
        assert score_cli.main([str(out), *map(str, files), "--json", *flag]) == 0
        rows = _json_lines(capsys.readouterr().out)
        np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-6)  # same path
