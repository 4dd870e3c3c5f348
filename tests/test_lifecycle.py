"""Bundle lifecycle on real textile images: re-thresholding from stored calibration scores,
score --threshold, the normalised score, and the warning for an unresolvable target FPR."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dn2.runtime import fit_cli, score_cli, threshold_cli
from dn2.runtime.bundle import load_bundle
from dn2.runtime.detector import Detector
from dn2.runtime.threshold import conformal_quantile


@pytest.fixture(scope="module")
def textile(textile_dirs):
    return sorted(str(p) for p in textile_dirs["nominal"].glob("*.jpg"))


@pytest.fixture(scope="module")
def bundle(lite0_model, textile, tmp_path_factory):
    out = tmp_path_factory.mktemp("life") / "b"
    assert (
        fit_cli.main([str(lite0_model), *textile[:120], "-o", str(out), "--fpr", "0.05", "-q"]) == 0
    )
    return out


def test_rethreshold_from_stored_scores_without_embedding(bundle, tmp_path, capsys):
    m = load_bundle(bundle).manifest
    stored = m.threshold.scores
    assert stored.n == 120 and len(stored.tail) == 120
    assert conformal_quantile(stored.tail, 0.05)["value"] == m.threshold.value
    copy = tmp_path / "copy"
    assert threshold_cli.main([str(bundle), "--fpr", "0.2", "-o", str(copy)]) == 0
    new = Detector.load(copy, load_model=False)
    assert new.threshold == conformal_quantile(stored.tail, 0.2)["value"]
    assert new.threshold < m.threshold.value  # a looser target, a lower threshold
    assert load_bundle(bundle).manifest.threshold.value == m.threshold.value
    assert threshold_cli.main([str(copy), "--value", "0.5"]) == 0  # in place, atomically
    assert Detector.load(copy, load_model=False).threshold == 0.5
    assert threshold_cli.main([str(copy), "--value", "-1"]) == 2
    assert "expected a positive number" in capsys.readouterr().err
    assert threshold_cli.main([str(copy), "--fpr", "0.001"]) == 0
    err = capsys.readouterr().err
    assert "cannot be resolved with 120 calibration scores" in err and "at least 999" in err


def test_score_threshold_and_normalised_score(bundle, textile, textile_dirs, capsys):
    defects = sorted(str(p) for p in textile_dirs["global"].glob("*.jpg"))[:3]
    files = textile[600:603] + defects
    assert score_cli.main([str(bundle), *files, "--json"]) in (0, 1)
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert r["norm_score"] == pytest.approx(r["score"] / r["threshold"], rel=1e-9)
        assert r["anomalous"] == (r["norm_score"] > 1.0)
    t = float(np.median([r["score"] for r in rows]))
    score_cli.main([str(bundle), *files, "--json", "--threshold", str(t)])
    over = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert all(r["threshold"] == t for r in over)
    assert sum(r["anomalous"] for r in over) == sum(r["score"] > t for r in rows) == 3


def test_too_few_images_for_the_target_fpr_is_said_loudly(lite0_model, textile, tmp_path, capsys):
    out = tmp_path / "few"
    assert (
        fit_cli.main([str(lite0_model), *textile[:30], "-o", str(out), "--fpr", "0.01", "-q"]) == 0
    )
    err = capsys.readouterr().err
    assert "WARNING: a target false-positive rate of 0.01 cannot be resolved with 30" in err
    assert "It takes at least 99 normal images" in err
    c = load_bundle(out).manifest.threshold.candidates["fpr"]
    assert c["capped"] and c["needed"] == 99
