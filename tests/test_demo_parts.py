"""The demo's parts: the production-line renderer and its ground truth, the verdict, the plot.

The whole demo (export, fit, watch) is run by .ci/run, not here. The renderer is checked on the
real textile images through a real OpenCV video file: every frame the ground truth calls a
defect frame must really show the defect image (found by its exact pixel columns, which the
lossless video keeps), and no other frame may show it.
"""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest

from dn2.runtime.errors import Dn2Error, MissingExtraError
from dn2.tools.demo import data as demo_data
from dn2.tools.demo import video as demo_video
from dn2.tools.demo.verdict import Alert, alerts_from_events, judge, read_events
from dn2.tools.demo.video import CLEAT, DEFECT_GAP, LEAD, Piece

from videos import read_video


def _column_keys(img: np.ndarray) -> set:
    """Each pixel column (cleat rows excluded) as bytes: a fingerprint of the image."""
    body = np.ascontiguousarray(img[CLEAT:-CLEAT].transpose(1, 0, 2))
    return {col.tobytes() for col in body}


def _share_in_centre(frame: np.ndarray, keys: set) -> float:
    """Fraction of the centre square's columns that are columns of the fingerprinted image."""
    h, w = frame.shape[:2]
    x0 = (w - h) // 2
    body = np.ascontiguousarray(frame[CLEAT:-CLEAT, x0 : x0 + h].transpose(1, 0, 2))
    return sum(col.tobytes() in keys for col in body) / h


@pytest.fixture(scope="module")
def line(tmp_path_factory, textile_dirs):
    nominal = sorted(str(p) for p in textile_dirs["nominal"].glob("*.jpg"))[:12]
    defects = [Piece(str(p), "global") for p in sorted(textile_dirs["global"].glob("*.jpg"))[:4]]
    plan = demo_video.plan_line(nominal, defects, n_frames=170, n_defects=2, seed=3)
    path = demo_video.render_video(plan, tmp_path_factory.mktemp("line") / "line.avi")
    return plan, demo_video.ground_truth(plan), read_video(path), path


def test_video_file_has_every_frame_losslessly(line):
    plan, _, frames, _ = line
    assert len(frames) == plan.n_frames
    assert frames[0].shape == (plan.height, plan.width, 3)
    images = demo_video.PieceImages(plan.height)
    for t in (0, 1, 7, 50, plan.n_frames - 1):  # FFV1 is lossless: bytes equal the render
        assert np.array_equal(frames[t], demo_video.render_frame(plan, t, images)), t


def test_ground_truth_frames_show_the_defect_and_others_do_not(line):
    plan, truth, frames, _ = line
    assert len(truth) == 2 and all(r.kind == "global" for r in truth)
    for r in truth:
        keys = _column_keys(cv2.imread(r.source))
        share = np.array([_share_in_centre(f, keys) for f in frames])
        # start..end: the defect fills at least half of what the detector sees (+1 column of
        # rounding: edges are placed at whole pixels)
        assert (share[r.start : r.end + 1] >= 0.5 - 1.0 / plan.height).all(), r
        # the dwell frames in the middle show nothing but the defect
        assert share[(r.start + r.end) // 2] == 1.0
        assert r.end - r.start + 1 >= plan.dwell_frames
        # outside the visible range the defect is nowhere in the centre square
        outside = np.ones(len(frames), bool)
        outside[r.visible_start : r.visible_end + 1] = False
        assert (share[outside] == 0).all(), r
        assert share[r.visible_start] > 0 and share[r.visible_end] > 0
        assert (share[r.visible_start : r.start] < 0.5).all()


def test_normal_stretches_show_only_normal_pieces(line):
    plan, truth, frames, _ = line
    defect_keys = set().union(*(_column_keys(cv2.imread(r.source)) for r in truth))
    busy = np.zeros(len(frames), bool)
    for r in truth:
        busy[r.visible_start : r.visible_end + 1] = True
    for t in np.flatnonzero(~busy)[::5]:
        assert _share_in_centre(frames[t], defect_keys) == 0.0, t


def test_plan_places_defects_apart_and_reproducibly():
    nominal = [f"n{i}.jpg" for i in range(50)]
    defects = [Piece(f"g{i}.jpg", "global") for i in range(20)]
    for seed in range(6):
        plan = demo_video.plan_line(nominal, defects, n_frames=400, n_defects=5, seed=seed)
        idx = [i for i, p in enumerate(plan.pieces) if p.kind != "nominal"]
        assert len(idx) == 5
        assert all(b - a >= DEFECT_GAP for a, b in zip(idx, idx[1:]))
        cycles = [i - 1 - LEAD for i in idx]
        assert min(cycles) >= 2 and max(cycles) <= 400 // plan.cycle - 2
        again = demo_video.plan_line(nominal, defects, n_frames=400, n_defects=5, seed=seed)
        assert again.pieces == plan.pieces
        ranges = demo_video.ground_truth(plan)
        assert [r.piece for r in ranges] == idx
        assert all(0 <= r.visible_start < r.start <= r.end < r.visible_end < 400 for r in ranges)


def test_plan_refuses_what_cannot_fit():
    nominal, defects = ["n.jpg"], [Piece("g.jpg", "global")]
    with pytest.raises(Dn2Error, match="cannot inject 5 defects"):
        demo_video.plan_line(nominal, defects, n_frames=100, n_defects=5)
    with pytest.raises(Dn2Error, match="at least one normal image"):
        demo_video.plan_line([], defects, n_frames=400, n_defects=1)


def test_writer_rejects_unknown_suffix(tmp_path):
    plan = demo_video.plan_line(["n.jpg"], [], n_frames=10, n_defects=0)
    with pytest.raises(Dn2Error, match="suffix"):
        demo_video.render_video(plan, tmp_path / "line.gif")


def test_ground_truth_json(line, tmp_path):
    plan, truth, _, path = line
    out = demo_video.write_ground_truth(plan, truth, tmp_path / "gt.json", 0.5, str(path))
    doc = json.loads(out.read_text())
    assert doc["frames"] == plan.n_frames and doc["video"] == str(path)
    assert [d["start"] for d in doc["defects"]] == [r.start for r in truth]
    assert len(doc["pieces"]) == len(plan.pieces)


# -- verdict ---------------------------------------------------------------------------------
DEFECTS = [
    dict(start=40, end=60, visible_start=39, visible_end=61),
    dict(start=120, end=140, visible_start=119, visible_end=141),
    dict(start=200, end=220, visible_start=199, visible_end=221),
]


def _events(*spans):
    out = []
    for i, (a, b) in enumerate(spans, 1):
        out.append({"type": "alert_start", "alert_id": i, "frame": a, "score": 2.0})
        if b is not None:
            out.append(
                {"type": "alert_end", "alert_id": i, "frame": b, "score": 0.5, "peak_score": 3.0}
            )
    return out


def test_verdict_all_found():
    v = judge(DEFECTS, alerts_from_events(_events((42, 64), (121, 143), (203, 222))))
    assert (v.found, v.injected, v.false_alerts, v.alerts) == (3, 3, 0, 3)
    assert v.found_by == [0, 1, 2]
    assert v.line() == "VERDICT: found 3/3 injected defects, 0 false alerts"


def test_verdict_counts_misses_and_false_alerts():
    # 1st found while partly visible (39); 2nd missed; an alert at 300 is false; the 3rd's
    # alert opens 6 frames after its range (slack 5): missed and, overlapping nothing, false
    v = judge(DEFECTS, alerts_from_events(_events((39, 63), (300, 310), (226, 230))), slack=5)
    assert v.found_by == [0, None, None]
    assert (v.found, v.false_alerts) == (1, 2)
    assert v.false_alert_frames == [(300, 310), (226, 230)]
    assert v.line() == "VERDICT: found 1/3 injected defects, 2 false alerts"


def test_verdict_slack_and_open_alert():
    # opening 5 frames after the range still counts; an alert left open at the end of the
    # stream (no alert_end) runs to the last frame
    v = judge(DEFECTS, alerts_from_events(_events((65, 70), (205, None))), n_frames=400)
    assert v.found_by == [0, None, 1] and v.false_alerts == 0
    assert alerts_from_events(_events((205, None)))[0].end is None


def test_verdict_alert_opened_before_the_defect_is_neither():
    # open already when the defect arrives (e.g. a false alert on the piece before): the
    # defect is not counted as found, and the alert is not false (it overlaps the defect)
    v = judge(DEFECTS[:1], [Alert(30, 55)])
    assert (v.found, v.false_alerts) == (0, 0)


def test_verdict_one_alert_over_two_defects_finds_one():
    v = judge(DEFECTS[:2], [Alert(41, 130)])
    assert v.found_by == [0, None]


def test_read_events_names_a_bad_line(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_text(json.dumps(_events((1, 5))[0]) + "\n{not json\n")
    with pytest.raises(Dn2Error, match=r"events.jsonl:2"):
        read_events(p)
    with pytest.raises(Dn2Error, match="does not exist"):
        read_events(tmp_path / "none.jsonl")


# -- plot, score log, data, model reuse --------------------------------------------------------
def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="pip install 'dn2[tools]'")
    from dn2.tools.demo.plot import plot_scores

    scores = np.full(250, 4.0)
    scores[40:61] = 15.0
    scores[[20, 21, 100, 101]] = 90.0  # joins: spikes two frames long
    out = plot_scores(
        range(250),
        scores,
        10.0,
        DEFECTS[:1],
        [Alert(42, 64)],
        tmp_path / "s.png",
        fps=10,
        found_by=[0],
    )
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 800


def test_score_log_alignment_check():
    from dn2.tools.demo.cli import _check_alignment

    scores = [1.0, 2.0, 3.5, 4.0]
    _check_alignment(scores, [{"frame": 2, "score": 3.5}, {"frame": 3, "score": None}])
    with pytest.raises(Dn2Error, match="out of step"):
        _check_alignment(scores, [{"frame": 1, "score": 3.5}])


def test_textile_split_is_disjoint_and_seeded(textile_dirs):
    data = demo_data.textile_set()
    assert len(data.nominal) >= 500 and len(data.global_defects) >= 100
    train, held = demo_data.split_nominal(data.nominal, 600, seed=0)
    assert len(train) == 600 and len(held) == len(data.nominal) - 600
    assert not set(train) & set(held)
    assert demo_data.split_nominal(data.nominal, 600, seed=0) == (train, held)
    assert demo_data.split_nominal(data.nominal, 600, seed=1)[0] != train
    with pytest.raises(Dn2Error, match="--train"):
        demo_data.split_nominal(data.nominal, 5, seed=0)


def test_missing_textile_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "conformal_clip_data", None)  # import now fails
    with pytest.raises(MissingExtraError, match=r"pip install 'dn2\[tools\]'"):
        demo_data.textile_set()


def test_model_reuse_needs_matching_stamp_and_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    from dn2.runtime.bundle import sha256_file
    from dn2.runtime.modelmeta import K_ARCH, K_WEIGHTS
    from dn2.tools.demo.cli import reusable_model, stamp_path

    from tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model.onnx", input_size=224, dim=8)
    stamp = stamp_path(model)
    stamp.write_text(sha256_file(model) + "  model.onnx\n")
    assert not reusable_model(model)  # arch tiny-test: not the demo's model
    m = onnx.load(str(model))
    for p in m.metadata_props:
        if p.key == K_ARCH:
            p.value = "efficientnet_lite0"
        if p.key == K_WEIGHTS:
            p.value = "imagenet:efficientnet-lite0-57934424.pth"
    onnx.save(m, str(model))
    assert not reusable_model(model)  # the stamp no longer matches the file
    stamp.write_text(sha256_file(model) + "  model.onnx\n")
    assert reusable_model(model)
    stamp.unlink()
    assert not reusable_model(model)
