"""Hysteresis, cooldown and the events file of dn2-watch (no model needed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dn2.runtime.errors import Dn2Error
from dn2.runtime.watch.decide import Decider
from dn2.runtime.watch.events import EventWriter, Snapshots, event_record


def run(decider, scores, fps=10.0):
    out = []
    for i, s in enumerate(scores):
        t = decider.update(s, i, i / fps)
        if t is not None:
            out.append((t.kind, t.frame, t.first_frame, t.peak.frame, round(t.peak.score, 3)))
    return out


def test_min_consecutive_opens_and_closes_once():
    lo, hi = 0.5, 2.0
    scores = [lo] * 5 + [hi, lo] * 3 + [hi, hi, 3.0, hi] + [lo, hi] * 3 + [lo] * 3 + [lo] * 5
    got = run(Decider(1.0, min_consecutive=3), scores)
    # isolated spikes (frames 5, 7, 9) never open; 11..13 do (opens on the 3rd: frame 13)
    # and single dips inside the alert (15, 17, 19) do not close it; three below in a row do.
    assert got == [("start", 13, 11, 13, 3.0), ("end", 23, 11, 13, 3.0)]


def test_threshold_is_strict_and_nan_is_no_evidence():
    d = Decider(1.0, min_consecutive=2)
    assert run(d, [1.0, 1.0, 1.0]) == []  # score == threshold is normal
    d = Decider(1.0, min_consecutive=2)
    assert run(d, [2.0, math.nan, 2.0]) == [("start", 2, 0, 0, 2.0)]


def test_cooldown_delays_the_next_alert_on_the_frame_clock():
    # 10 fps; alert 1 ends at frame 8 (t=0.8 s); cooldown 2 s -> nothing may open before 2.8 s.
    scores = [2.0] * 5 + [0.0] * 4 + [2.0] * 30
    got = run(Decider(1.0, min_consecutive=2, cooldown=2.0), scores)
    assert got[0] == ("start", 1, 0, 0, 2.0)
    assert got[1][:2] == ("end", 6)
    # cooldown counts from the end (frame 6, 0.6 s): the run from frame 9 opens at 2.6 s
    assert got[2][:3] == ("start", 26, 9)
    assert len(got) == 3
    no_cd = run(Decider(1.0, min_consecutive=2, cooldown=0.0), scores)
    assert no_cd[2][:2] == ("start", 10)


def test_finish_closes_an_open_alert():
    d = Decider(1.0, min_consecutive=1)
    assert d.update(5.0, 0, 0.0).kind == "start"
    d.update(7.0, 1, 0.1)
    t = d.finish("stopped", frame=1, timestamp=0.1)
    assert (t.kind, t.reason, t.peak.score, t.peak.frame) == ("end", "stopped", 7.0, 1)
    assert d.finish() is None  # nothing open any more
    assert d.alerts == 1


def test_each_alert_is_one_start_and_one_end_over_a_long_noisy_stream():
    rng = np.random.default_rng(0)
    normal = rng.normal(0.5, 0.15, 10_000)  # P(> 1.0) ~ 4e-4 per frame
    scores = normal.copy()
    spans = [(1000, 1040), (4000, 4100), (9000, 9010)]
    for a, b in spans:
        scores[a:b] = rng.normal(2.0, 0.3, b - a)
    d = Decider(1.0, min_consecutive=3)
    got = run(d, scores)
    assert [k for k, *_ in got] == ["start", "end"] * 3
    for (a, b), (start, end) in zip(spans, zip(got[0::2], got[1::2])):
        assert a + 2 <= start[1] <= a + 4  # opens on the 3rd frame above (~P(<1) = 5e-4)
        assert b + 2 <= end[1] <= b + 4


def test_bad_options_are_refused():
    with pytest.raises(Dn2Error, match="min_consecutive"):
        Decider(1.0, min_consecutive=0)
    with pytest.raises(Dn2Error, match="cooldown"):
        Decider(1.0, cooldown=-1)
    with pytest.raises(Dn2Error, match="finite"):
        Decider(float("nan"))


def test_events_file_is_json_lines_flushed_per_event(tmp_path):
    img = np.full((40, 60, 3), 128, np.uint8)
    img[10:20, 10:30] = (0, 0, 255)
    d = Decider(1.0, min_consecutive=2)
    path, snaps = tmp_path / "ev" / "events.jsonl", Snapshots(tmp_path / "snaps")
    w = EventWriter(path)
    ts = []
    for i, s in enumerate([0.2, 1.5, 4.0, 1.2, 0.1, 0.1]):
        t = d.update(s, i, i * 0.5, img if s == 4.0 else img * 0)
        if t is not None:
            ts.append(t)
            w.write(event_record(t, 1.0, snaps.save(t), "frame", "cam", "source"))
            # flushed: a reader sees the line while the writer is still open
            assert len(path.read_text().splitlines()) == len(ts)
    assert d.finish() is None
    w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [e["type"] for e in lines] == ["alert_start", "alert_end"]
    start, end = lines[0], lines[1]
    assert (start["frame"], start["first_frame"], start["peak_frame"]) == (2, 1, 2)
    assert start["score"] == 4.0 and start["threshold"] == 1.0 and start["clock"] == "source"
    assert (end["frame"], end["reason"], end["last_above_frame"]) == (5, "recovered", 3)
    assert end["duration_s"] == pytest.approx(2.0) and end["peak_score"] == 4.0
    # start and end share the peak frame, so they share one snapshot file
    assert start["snapshot"] == end["snapshot"]
    import cv2

    snap = cv2.imread(start["snapshot"])
    assert snap.shape == img.shape and snap[15, 20, 2] > 200  # the peak frame (red patch)
    # appending: a second writer adds to the log, keeps the old lines
    with EventWriter(path) as w2:
        w2.write({"type": "alert_start", "alert_id": 9})
    assert len(path.read_text().splitlines()) == len(lines) + 1


def test_events_file_that_cannot_be_opened_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(Dn2Error, match="events file"):
        EventWriter(tmp_path / "f" / "events.jsonl")
