"""dn2-watch end to end: real lite0 model, real bundles, real video files and an HTTP stream.

The scene: a camera that sees two kinds of normal surface in turn (real textile photos from
conformal-clip-data and crops of skimage's grass photo), frame after frame: A B A B ...
Anomalies are stains drawn onto real frames at known frame ranges. The group scene has no
abnormal frame at all: only a run of A frames, which breaks the A/B alternation that every
normal group shows (paper 3.3: each image normal, the set not).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from dn2.runtime.config import WatchConfig
from dn2.runtime.errors import Dn2Error
from dn2.runtime.watch.loop import watch
from dn2.runtime.watch.reader import Backoff

from videos import (
    MjpegCamera,
    interleave,
    load_frames,
    read_video,
    stain,
    texture_crops,
    write_video,
)

M = 6  # group size: 3 textile + 3 grass frames per normal group
STAINS = [(50, 65), (130, 140)]  # frame ranges [a, b) with a stain drawn on
A_RUN = (60, 100)  # group scene: frames [a, b) are all textile


def events_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def pairs(events):
    starts = [e for e in events if e["type"] == "alert_start"]
    ends = [e for e in events if e["type"] == "alert_end"]
    assert [e["alert_id"] for e in starts] == [e["alert_id"] for e in ends]
    return list(zip(starts, ends))


@pytest.fixture(scope="module")
def scenes(textile_dirs):
    skimage_data = pytest.importorskip("skimage.data")
    a = load_frames(textile_dirs["nominal"], 220, size=160)
    b = texture_crops(skimage_data.grass(), 220, size=160, seed=1)
    return a, b  # [0, 120) train, [120, 220) held out for the streams


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("watch")


@pytest.fixture(scope="module")
def bundle(lite0_model, scenes, work):
    """Fitted on frames as the camera delivers them (through the same video codec).

    Normal groups are folders of 3 textile + 3 grass frames (paper 3.3's normal sets: one
    image of each kind per pair), so the bundle also gets a group bank and threshold.
    """
    from dn2.runtime.fit import fit_bundle

    a, b = scenes
    train = read_video(write_video(work / "train.avi", interleave(a[:120], b[:120])))
    root = work / "groups"
    for g in range(len(train) // M):
        d = root / f"g{g:02d}"
        d.mkdir(parents=True)
        for j in range(M):
            cv2.imwrite(str(d / f"{j}.png"), train[g * M + j])
    return fit_bundle(
        lite0_model, work / "bundle", images=[str(root)], group_dirs=[str(root)], progress=False
    )


@pytest.fixture(scope="module")
def stained(scenes, work):
    """200 held-out normal frames A B A B ..., stains over the STAINS ranges."""
    a, b = scenes
    frames = interleave(a[120:220], b[120:220])
    for lo, hi in STAINS:
        for i in range(lo, hi):
            frames[i] = stain(frames[i], seed=i)
    return frames, write_video(work / "stained.avi", frames, fps=25.0)


@pytest.fixture(scope="module")
def group_scene(scenes, work):
    """160 held-out frames: A B A B ... (60), then 40 A only, then A B A B ... (60)."""
    a, b = scenes
    frames = interleave(a[120:150], b[120:150]) + a[150:190] + interleave(a[190:220], b[150:180])
    assert len(frames) == 160
    return write_video(work / "group_scene.avi", frames, fps=25.0)


def check_stain_alerts(events):
    got = pairs(events)
    assert len(got) == len(STAINS), events
    for (start, end), (lo, hi) in zip(got, STAINS):
        # --min-consecutive 3: opens on the 3rd stained frame, closes on the 3rd clean one;
        # one frame of slack each way for a stain the model finds faint
        assert lo <= start["first_frame"] <= lo + 1
        assert lo + 2 <= start["frame"] <= lo + 3
        assert hi + 2 <= end["frame"] <= hi + 3 and end["reason"] == "recovered"
        assert lo <= end["peak_frame"] < hi and end["peak_score"] > end["threshold"]
    return got


def test_stains_open_one_alert_each_and_normal_frames_none(bundle, stained, work):
    frames, video = stained
    ev = work / "stain_events.jsonl"
    s = watch(
        str(bundle),
        str(video),
        WatchConfig(
            events=str(ev),
            snapshots=str(work / "snaps"),
            output_video=str(work / "annotated.avi"),
            min_consecutive=3,
            batch=8,
        ),
    )
    assert s.error is None and not s.stopped
    assert s.frames_read == s.frames_scored == 200 and s.dropped == 0
    got = check_stain_alerts(events_of(ev))
    assert s.alerts == 2 and s.events == 4
    start, end = got[0]
    assert start["clock"] == "source" and start["timestamp"] == pytest.approx(start["frame"] / 25)
    assert end["duration_s"] == pytest.approx((end["frame"] - start["first_frame"]) / 25)
    snap = cv2.imread(end["snapshot"])
    peak = frames[end["peak_frame"]]
    # the snapshot is the peak frame itself (JPEG + MJPG round trips: a few grey levels)
    assert snap.shape == peak.shape and np.abs(snap.astype(int) - peak).mean() < 6.0
    annotated = read_video(work / "annotated.avi")
    assert len(annotated) == 200
    assert tuple(annotated[start["frame"]][80, 1] > 150) == (False, False, True)  # red border


def test_group_mode_catches_a_run_no_single_frame_shows(bundle, group_scene, work):
    per_frame = watch(
        str(bundle), str(group_scene), WatchConfig(events=str(work / "g_frame.jsonl"))
    )
    assert per_frame.alerts == 0  # every frame on its own is normal
    ev = work / "g_group.jsonl"
    # With a sliding window (hop 1) one odd frame sits in M windows; --min-consecutive M + 1
    # keeps a single odd frame from opening a group alert (the held-out frames hold one that
    # lifts its 6 windows just over the 40-group threshold). The A run fills 35 windows.
    n = M + 1
    s = watch(
        str(bundle), str(group_scene), WatchConfig(group=M, events=str(ev), min_consecutive=n)
    )
    assert s.groups_scored == 160 - M + 1
    got = pairs(events_of(ev))
    assert len(got) == 1, got
    start, end = got[0]
    lo, hi = A_RUN
    # The first window with 4 of its 6 frames from the run ends at frame lo + 1 (measured:
    # 4A+2B scores ~2x the threshold, all-A ~14x; 3A+3B is normal). The alert opens n windows
    # after the first high one and closes n windows after the last (4A+2B again at hi + 4).
    assert lo + n <= start["frame"] <= lo + M + n - 1 and start["mode"] == "group"
    assert lo + 1 <= start["first_frame"] <= lo + M - 1
    assert hi + n - 1 <= end["frame"] <= hi + M + n - 1
    # the message names the field the Python caller set, and the size that would hold
    with pytest.raises(Dn2Error, match=r"group=4: expected 6, the size of the bundle's normal"):
        watch(str(bundle), str(group_scene), WatchConfig(group=4))


def test_http_camera_dropping_mid_alert_reconnects_and_loses_no_event(bundle, stained, work):
    # the frames as the bundle's camera delivers them (the codec matters: fit and watch
    # should see the same compression; these went through the same MJPG as the training)
    frames = read_video(stained[1])
    ev = work / "http_events.jsonl"
    # the camera drops inside the first stain (frame 57) and is back 0.6 s later
    with MjpegCamera(frames, fps=40.0, drop_after=57, down_s=0.6) as cam:
        s = watch(
            str(bundle),
            cam.url,
            WatchConfig(
                events=str(ev), min_consecutive=3, batch=8, queue_size=512, max_frames=len(frames)
            ),
            backoff=Backoff(initial=0.2, max_delay=0.5),
        )
    assert s.reconnects == 1 and s.failures >= 1 and cam.refused >= 1
    assert s.frames_scored == len(frames) and s.dropped == 0  # nothing lost, nothing made up
    got = check_stain_alerts(events_of(ev))
    assert got[0][0]["clock"] == "wall"


def test_live_source_that_lags_drops_oldest_and_counts(bundle, stained, work):
    frames, _ = stained
    fast = write_video(work / "fast.avi", frames[:120], fps=400.0)
    seen = []

    def slow_consumer(frame, ts, score):  # at most ~50 frames/s, whatever the hardware
        seen.append(frame)
        time.sleep(0.02)

    s = watch(
        str(bundle),
        str(fast),
        WatchConfig(realtime=True, batch=4, queue_size=4),
        on_score=slow_consumer,
    )
    assert s.dropped > 0
    assert s.frames_scored + s.dropped == s.frames_read == 120 == len(seen) + s.dropped
    # what is scored is in order, and the newest frame is never the one dropped
    assert seen == sorted(seen) and seen[-1] == 119


def test_learn_fits_from_the_first_frames_then_watches(lite0_model, stained, work):
    frames, video = stained
    ev = work / "learn_events.jsonl"
    s = watch(
        str(lite0_model),
        str(video),
        WatchConfig(
            learn="40f", learn_bundle=str(work / "learned"), events=str(ev), min_consecutive=3
        ),
    )
    assert (work / "learned" / "dn2.json").is_file() and s.bundle == str(work / "learned")
    assert s.frames_read == 200 and s.frames_scored == 160  # 40 learned, then watched
    check_stain_alerts(events_of(ev))


def test_learn_in_group_mode_learns_the_streams_own_windows(lite0_model, group_scene, work):
    """Learned from 40 alternating frames, the groups are consecutive windows (always 3 + 3),
    so the later run of A frames stands out, though each of its frames was seen in learning."""
    ev = work / "learn_group.jsonl"
    n = M + 1
    s = watch(
        str(lite0_model),
        str(group_scene),
        WatchConfig(learn="40f", group=M, events=str(ev), min_consecutive=n),
    )
    assert s.bundle is None and s.groups_scored == 120 - M + 1
    got = pairs(events_of(ev))
    assert len(got) == 1, got
    start, end = got[0]
    lo, hi = A_RUN
    assert lo + n <= start["frame"] <= lo + M + n - 1
    assert hi + n - 1 <= end["frame"] <= hi + M + n - 1


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_signal_leaves_valid_json_lines_with_every_alert_closed(sig, bundle, stained, work):
    frames, _ = stained
    # a long stain from frame 20 to the end, replayed in real time: the alert is open when the
    # signal comes
    video = work / "long.avi"
    if not video.exists():
        write_video(video, [stain(f, i) if i >= 20 else f for i, f in enumerate(frames)], 20.0)
    ev = work / f"{sig.name}_events.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "dn2.runtime.watch.cli",
        str(bundle),
        "--source",
        str(video),
        "--realtime",
        "--headless",
        "--events",
        str(ev),
        "--stats-every",
        "0.5",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (ev.exists() and "alert_start" in ev.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no alert within 120 s"
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"{sig.name} received" in err and "Traceback" not in err
    assert "[dn2-watch] " in err  # the periodic stats line
    events = events_of(ev)  # every line parses
    assert [e["type"] for e in events] == ["alert_start", "alert_end"]
    assert events[1]["reason"] == "stopped" and events[1]["peak_score"] > events[1]["threshold"]
    assert "stopped" in out


def test_bench_watch_runs_and_reports_its_columns(lite0_model, bundle, work):
    """A smoke run of tools/bench/watch.py (the numbers themselves go to BENCHMARKS.md)."""
    from dn2.tools.bench.watch import bench, table

    r = bench(
        str(lite0_model),
        str(bundle),
        n_frames=16,
        size="160x120",
        batch=4,
        threads=1,
        live_fps=40.0,
        work=work,
        repeats=1,
    )
    assert r["frames"] == 16 and r["live_dropped"] >= 0
    assert r["loop_fps"] > 0 and r["model_fps"] > 0 and r["loop_latency_p95_ms"] > 0
    assert r["loop_over_model"] == pytest.approx(r["loop_fps"] / r["model_fps"])
    text = table(r)
    assert "loop, file (every frame)" in text and "x bare" in text


def test_a_jpeg_draft_bundle_is_noted_when_watching_frames(bundle, stained, work):
    import shutil

    drafted = work / "bundle_draft"
    shutil.copytree(bundle, drafted)
    m = json.loads((drafted / "dn2.json").read_text())
    m["score"]["jpeg_draft"] = True  # as dn2-fit --jpeg-draft writes it
    (drafted / "dn2.json").write_text(json.dumps(m))
    said = []
    s = watch(str(drafted), str(stained[1]), WatchConfig(max_frames=8, batch=8), log=said.append)
    assert s.error is None and s.frames_scored == 8
    assert any("fitted with --jpeg-draft" in line for line in said), said
    said.clear()
    watch(str(bundle), str(stained[1]), WatchConfig(max_frames=8, batch=8), log=said.append)
    assert not any("jpeg-draft" in line for line in said), said
