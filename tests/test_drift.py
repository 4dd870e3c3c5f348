"""Drift warning: a bank whose normal set does not look like this camera's frames."""

from __future__ import annotations

import json

import cv2
import pytest

from dn2.runtime.config import WatchConfig
from dn2.runtime.fit import fit_bundle
from dn2.runtime.watch.loop import watch

from videos import camera_frames


@pytest.fixture(scope="module")
def scene(lite0_model, textile_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    files = sorted(str(p) for p in textile_dirs["nominal"].glob("*.jpg"))
    colour = fit_bundle(
        lite0_model, root / "colour", images=files[:60], color="color", progress=False
    )
    gray = fit_bundle(lite0_model, root / "gray", images=files[:60], progress=False)
    camera_frames([cv2.imread(p) for p in files[300:340]], root / "cam.avi", "MJPG", sigma=3.0)
    return root, colour, gray


def test_frames_unlike_the_normal_set_are_said_once(scene):
    root, colour, _ = scene
    ev, logs = root / "c.jsonl", []
    s = watch(str(colour), str(root / "cam.avi"), WatchConfig(events=str(ev)), log=logs.append)
    said = [m for m in logs if m.startswith("DRIFT: this camera's frames do not look like")]
    assert len(said) == 1 and "Refit from this camera: dn2 fit MODEL" in said[0]
    assert s.drift == said[0] and said[0] in s.text() and s.to_dict()["drift"] == said[0]
    drift = [json.loads(x) for x in ev.read_text().splitlines() if json.loads(x)["type"] == "drift"]
    assert len(drift) == 1 and drift[0]["frame"] == 29 and drift[0]["median_norm_score"] > 2


def test_a_matching_bank_gives_no_drift_warning(scene):
    root, _, gray = scene
    logs = []
    s = watch(str(gray), str(root / "cam.avi"), log=logs.append)
    assert s.drift is None and not any("DRIFT" in m for m in logs)
