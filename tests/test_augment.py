"""--augment camera on real textile stills: real MJPG / mp4v round trips join the bank."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dn2.runtime import fit_cli
from dn2.runtime.augment import camera_variants
from dn2.runtime.bundle import load_bundle
from dn2.runtime.detector import Detector


@pytest.fixture(scope="module")
def textile(textile_dirs):
    return sorted(str(p) for p in textile_dirs["nominal"].glob("*.jpg"))


def test_variants_carry_the_codec_cast_and_noise(textile):
    imgs = [cv2.imread(p) for p in textile[:6]]
    var, origin = camera_variants(imgs, copies=1, seed=3)
    assert origin == [0, 2, 4, 1, 3, 5]  # MJPG for even, mp4v for odd (alternating codecs)
    for v, o in zip(var, origin):
        assert v.shape == imgs[o].shape
        diff = np.abs(v.astype(int) - imgs[o]).mean()
        assert 1.0 < diff < 40.0  # changed like a camera changes it, still the same piece
        # the video path's colour conversion: a gray piece is no longer exactly gray
        assert np.abs(v[..., 0].astype(int) - v[..., 2]).mean() > 0.3
    again, _ = camera_variants(imgs, copies=1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(var, again))  # seeded


def test_fit_with_augment_records_it_and_groups_variants(lite0_model, textile, tmp_path):
    plain, aug = tmp_path / "plain", tmp_path / "aug"
    args = [str(lite0_model), *textile[:40], "-o", str(plain), "-q", "--fpr", "0.1"]
    assert fit_cli.main(args + ["--augment", "none"]) == 0
    assert (
        fit_cli.main(
            [
                str(lite0_model),
                *textile[:40],
                "-o",
                str(aug),
                "-q",
                "--fpr",
                "0.1",
                "--augment",
                "camera",
            ]
        )
        == 0
    )
    m = load_bundle(aug).manifest
    assert m.fit.augment["variants"] == 40 and m.fit.augment["codecs"] == [
        "MJPG",
        "mp4v",
    ]
    # the default: variants join the bank only; the stills alone calibrate the threshold
    assert m.bank.n == 80 and m.threshold.extra["n_calibration"] == 40
    assert m.fit.augment["into"] == "bank"
    both = tmp_path / "both"
    args = [str(lite0_model), *textile[:40], "-o", str(both), "-q", "--fpr", "0.1"]
    assert fit_cli.main(args + ["--augment", "camera", "--augment-into", "both"]) == 0
    mb = load_bundle(both).manifest
    assert mb.bank.n == 80 and mb.threshold.extra["n_calibration"] == 80
    # each variant is scored without its original: the threshold does not collapse
    assert (
        Detector.load(both, load_model=False).threshold
        > 0.8 * Detector.load(plain, load_model=False).threshold
    )


def test_the_default_varies_stills_not_frames_nor_kmeans(lite0_model, textile, tmp_path):
    """augment auto (the default): camera variants of still images join an exact bank; the
    frames of a real MJPG video with sensor noise, and a k-means bank, get none."""
    from videos import line_video

    still = tmp_path / "still"
    assert fit_cli.main([str(lite0_model), *textile[:30], "-o", str(still), "-q"]) == 0
    m = load_bundle(still).manifest
    assert m.fit.config.augment == "auto"
    assert m.fit.augment["option"] == "auto" and m.fit.augment["mode"] == "camera"
    assert m.fit.augment["into"] == "bank" and m.fit.augment["variants"] == 30
    assert m.bank.n == 60 and m.threshold.extra["n_calibration"] == 30

    vid, _ = line_video(tmp_path / "line.avi", textile[100:130], 120, seed=1)
    frames = tmp_path / "frames"
    assert fit_cli.main([str(lite0_model), str(vid), "--every", "2", "-o", str(frames), "-q"]) == 0
    mf = load_bundle(frames).manifest
    assert mf.fit.augment is None and mf.bank.n == 60  # 120 frames, every 2nd

    km = tmp_path / "km"
    args = [str(lite0_model), *textile[:30], "-o", str(km), "-q", "--kmeans", "10"]
    assert fit_cli.main(args) == 0
    mk = load_bundle(km).manifest
    assert mk.fit.augment is None and mk.bank.n == 10
    # "camera" asked for explicitly with a k-means bank is still refused (bank-only variants
    # cannot join a bank calibrated on folds of its own rows)
    assert fit_cli.main(args + ["-o", str(tmp_path / "km2"), "--augment", "camera"]) == 2
