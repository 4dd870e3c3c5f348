"""Overlay drawing, annotated video output, GUI detection and stats (no model needed)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dn2.runtime.errors import Dn2Error
from dn2.runtime.watch.overlay import VideoSink, Window, draw, gui_available, text_score
from dn2.runtime.watch.stats import Stats, Summary, percentile_ms

from videos import load_frames, read_video


def test_overlay_draws_bar_state_and_leaves_the_input_alone(textile_dirs):
    img = load_frames(textile_dirs["nominal"], 1, size=200)[0]
    before = img.copy()
    low = draw(img, 0.5, 1.0, "normal", 24.0)
    high = draw(img, 1.5, 1.0, "ALERT", 24.0)
    assert np.array_equal(img, before) and low.shape == img.shape
    y = 200 - max(8, 200 // 20) // 2 - 8  # the bar's middle row
    # score/threshold 0.5 fills a quarter of the bar (full = 2x threshold): green at 20 %,
    # dark at 40 %; 1.5 fills 75 %, in red (ALERT)
    assert tuple(low[y, 8 + int(0.2 * 184)]) == (60, 180, 60)
    assert tuple(low[y, 8 + int(0.4 * 184)]) == (40, 40, 40)
    assert tuple(high[y, 8 + int(0.7 * 184)]) == (0, 0, 255)
    assert tuple(high[100, 0]) == (0, 0, 255)  # the alert frame border
    assert np.array_equal(draw(img, None, 1.0, "normal", 0.0)[y, 20], (40, 40, 40))


def test_overlay_shows_the_normalised_score_beside_the_raw_one(textile_dirs):
    img = load_frames(textile_dirs["nominal"], 1, size=320)[0]
    assert text_score(0.0612, 0.0502) == "score 0.0612 / thr 0.0502 = 1.22x"
    assert text_score(None, 0.0502) == "score - / thr 0.0502"
    out = draw(img, 0.0612, 0.0502, "arming", None, "frame 7")
    # the header is exactly that text (no fps for a snapshot), in the state's colour, on black
    text = "arming  score 0.0612 / thr 0.0502 = 1.22x frame 7"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    ref = img.copy()
    cv2.rectangle(ref, (4, 4), (12 + tw, 12 + th), (0, 0, 0), -1)
    cv2.putText(
        ref, text, (8, 8 + th), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 255), 1, cv2.LINE_AA
    )
    assert np.array_equal(out[4 : 13 + th, 4 : 13 + tw], ref[4 : 13 + th, 4 : 13 + tw])
    other = draw(img, 0.0612, 0.0600, "arming", None, "frame 7")  # 1.02x: other pixels
    assert not np.array_equal(other[4 : 13 + th, 4 : 13 + tw], out[4 : 13 + th, 4 : 13 + tw])


def test_annotated_video_is_written_and_readable(tmp_path, textile_dirs):
    frames = load_frames(textile_dirs["nominal"], 12, size=120)
    sink = VideoSink(tmp_path / "out" / "annotated.avi", fps=12.0)
    for i, f in enumerate(frames):
        sink.write(draw(f, 0.1 * i, 1.0, "normal", 12.0))
    sink.write(cv2.resize(frames[0], (64, 80)))  # a resolution change is resized, not lost
    sink.close()
    back = read_video(tmp_path / "out" / "annotated.avi")
    assert len(back) == 13 and back[0].shape == (120, 120, 3)
    with pytest.raises(Dn2Error, match="expected a name ending in"):
        VideoSink(tmp_path / "out.gif", fps=10)


def test_window_needs_a_gui_build_and_says_so():
    ok, why = gui_available()
    if "GUI: NONE" in cv2.getBuildInformation().replace("  ", " ") or not ok:
        assert not ok and ("headless" in why)
        with pytest.raises(Dn2Error, match="cannot open a window"):
            Window("t", on_quit=lambda: None)
    else:
        pytest.skip("this OpenCV has a GUI and a display")


def test_stats_percentiles_and_bounded_memory():
    st = Stats(window=100)
    for _ in range(1000):
        st.record([0.0])
    assert len(st.latencies) == 100 and st.frames == 1000
    assert percentile_ms([0.010, 0.020, 0.030], 50) == pytest.approx(20.0)
    assert percentile_ms([], 50) is None
    s = st.fill(Summary(source="x", mode="frame", threshold=1.0))
    assert s.frames_scored == 1000 and "1000 frames scored" in s.text()
