"""The camera study's saved lines: a real MJPG + noise line scored by a real bundle, saved,
read back, re-counted and re-thresholded the way `dn2 threshold` does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dn2.tools.studies import camera, camera_lines


def test_sustained_peak_is_the_level_mc_frames_in_a_row_exceed():
    s = np.asarray([0.1, 0.9, 0.2, 0.8, 0.7, 0.75, 0.1, 0.95, 0.9])
    # runs of 3 starting at 3..5: min(0.8, 0.7, 0.75) = 0.7 is the best; the lone 0.9 and the
    # pair 0.95, 0.9 at the end (starts 7, 8 leave fewer than 3 frames) do not count
    assert camera_lines.sustained_peak(s, 0, 8, 3) == pytest.approx(0.7)
    assert camera_lines.sustained_peak(s, 7, 8, 2) == pytest.approx(0.9)
    assert np.isnan(camera_lines.sustained_peak(s, 8, 8, 3))


def test_saved_lines_give_back_the_run_rows(lite0_model, textile_dirs, tmp_path):
    pytest.importorskip("conformal_clip_data", reason="pip install 'dn2[test]'")
    save = tmp_path / "lines"
    res = camera.run(
        str(lite0_model),
        tmp_path,
        train=24,
        frames=300,  # 3 defect pieces: 10 per 1000 frames
        n_defects=10,
        sigma=3.0,
        min_consecutive=[3],
        seeds=[0],
        bundles=["default"],
        conditions=["MJPG+noise"],  # the real MJPG writer, sigma-3 noise per channel
        fit_every=10,
        threads=2,
        log=lambda m: None,
        save=save,
    )
    files = sorted(p.name for p in save.glob("*.npz"))
    assert files == ["MJPG+noise-seed0.npz"]
    (row,) = res["rows"]
    assert row["frames"] == 300 and row["injected"] == 3 and row["lines"] == 1
    back = camera_lines.summarize(save, [3], [None])
    (again,) = back["rows"]
    for f in ("frames", "false_alerts", "false_per_seed", "found", "injected", "false_at_rest"):
        assert again[f] == row[f], f
    # noise makes every frame distinct: the scores are not one repeated value
    (_, _, line) = next(camera_lines.load_lines(save))
    s = line["scores"]["default"]
    assert s.shape == (300,) and np.unique(s).size > 250
    bundle = json.loads((tmp_path / "default" / "dn2.json").read_text())
    assert line["threshold"]["default"] == pytest.approx(bundle["threshold"]["value"], rel=1e-9)
    # the largest stored calibration score is the 24-image threshold at any fpr below 1/25
    # (capped), and a larger fpr takes a lower rank of the same stored scores
    top = camera_lines.threshold_at(line, "default", 0.01)
    assert top == pytest.approx(max(bundle["threshold"]["scores"]["tail"]), rel=1e-9)
    assert camera_lines.threshold_at(line, "default", 0.2) < top
    rows = camera_lines.per_defect(save, "MJPG+noise", "MJPG+noise", "default", 3)
    assert len(rows) == 3 and all(r["a"] == r["b"] for r in rows)
    assert sum(r["a"] > 1.0 for r in rows) >= row["found"]  # a found defect had 3 in a row above
