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
    assert (
        fit_cli.main([str(lite0_model), *textile[:40], "-o", str(plain), "-q", "--fpr", "0.1"]) == 0
    )
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
