"""Several cameras in one dn2-watch: real MJPG videos with sensor noise (one with real defective
textile photos cut in, one with stains drawn in, one that ends early, one clean) and a real
HTTP MJPEG camera that drops for good, through the command line; one model session batching
across them, per-camera decisions, events, stats and outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dn2.runtime.config import WatchConfig
from dn2.runtime.watch.cameras import camera_ids, expand_sources
from dn2.runtime.watch.cli import main
from dn2.runtime.watch.loop import watch

from sinkscene import STAINS, frames, make_scene
from videos import MjpegCamera, read_video, write_video

DEFECTS = (30, 50)  # [a, b): frames of the "textile" camera that are real defective photos


def _events(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def cams(textile_dirs, lite0_model, tmp_path_factory):
    """The bundle (efficientnet_lite0, real ImageNet weights: the tiny test model does not
    see real fabric defects) and four camera videos (MJPG, 16:9, sensor noise)."""
    root = tmp_path_factory.mktemp("multi")
    bundle, stained = make_scene(root, textile_dirs["nominal"], lite0_model)
    textile = frames(textile_dirs["nominal"], 80, 300, seed=6)
    bad = frames(textile_dirs["global"], DEFECTS[1] - DEFECTS[0], 0, seed=7)
    textile[DEFECTS[0] : DEFECTS[1]] = bad  # real defective fabric passing the camera
    videos = {
        "clean": write_video(root / "clean.avi", frames(textile_dirs["nominal"], 60, 400, 5)),
        "textile": write_video(root / "textile.avi", textile),
        "short": write_video(root / "short.avi", frames(textile_dirs["nominal"], 25, 500, 8)),
        "stained": Path(stained).rename(root / "stained.avi"),
    }
    return root, bundle, videos


def test_four_cameras_from_a_streams_file(cams, tmp_path, capsys):
    root, bundle, v = cams
    streams = tmp_path / "cams.streams"
    streams.write_text(
        "# one source per line\n" + "\n".join(str(v[k]) for k in ("clean", "textile")) + "\n\n"
        f"{v['short']}\n{v['stained']}\n"
    )
    ev, sc, snaps = tmp_path / "ev.jsonl", tmp_path / "scores.csv", tmp_path / "snaps"
    args = [str(bundle), "--source", str(streams), "--events", str(ev), "--scores", str(sc)]
    args += ["--snapshots", str(snaps), "--min-consecutive", "2", "--batch", "8", "--json"]
    assert main(args) == 0
    s = json.loads(capsys.readouterr().out)
    per = {c["camera"]: c for c in s["cameras"]}
    assert list(per) == ["clean", "textile", "short", "stained"]
    lengths = {"clean": 60, "textile": 80, "short": 25, "stained": len(read_video(v["stained"]))}
    for cid, n in lengths.items():  # files never drop: every frame of every camera scored
        assert per[cid]["frames_scored"] == per[cid]["frames_read"] == n, cid
        assert per[cid]["latency_p95_ms"] >= per[cid]["latency_p50_ms"] > 0
    assert s["frames_scored"] == sum(lengths.values()) and s["error"] is None
    events = _events(ev)
    assert all(e["camera"] in per for e in events)  # every event names its camera
    starts = {
        cid: [e for e in events if e["camera"] == cid and e["type"] == "alert_start"] for cid in per
    }
    assert starts["clean"] == [] and starts["short"] == []  # normal footage: no alert
    # the real defective photos (a texture change, subtle at this size) score high on that
    # camera: its own rows rank them above its normal frames (measured AUROC 0.95), and any
    # alert it raises falls inside the defect run
    tex = [
        (int(r["frame"]), float(r["score"]))
        for r in csv.DictReader(sc.open())
        if r["camera"] == "textile"
    ]
    inside = np.array([x for f, x in tex if DEFECTS[0] <= f < DEFECTS[1]])
    outside = np.array([x for f, x in tex if not DEFECTS[0] <= f < DEFECTS[1]])
    auroc = float(np.mean(inside[:, None] > outside[None, :]))
    assert auroc >= 0.85, auroc
    assert all(DEFECTS[0] < e["frame"] < DEFECTS[1] + 2 for e in starts["textile"])
    assert len(starts["stained"]) == len(STAINS)
    for e, (a, b) in zip(starts["stained"], STAINS):
        assert a + 1 <= e["frame"] < b
    ends = [e for e in events if e["type"] == "alert_end"]
    assert len(ends) == len(events) // 2  # every alert closed
    for e in events:  # snapshots named by camera
        assert Path(e["snapshot"]).name.startswith(f"{s['run_id']}_{e['camera']}_alert")
    rows = list(csv.DictReader(sc.open()))
    assert len(rows) == s["frames_scored"]
    assert {r["camera"] for r in rows} == set(per)
    for cid in per:  # each camera's rows in its frame order
        idx = [int(r["frame"]) for r in rows if r["camera"] == cid]
        assert idx == sorted(idx) and len(idx) == lengths[cid]

    # one source behaves as before: the same decisions and scores for the stained camera
    single_ev, single_sc = tmp_path / "one.jsonl", tmp_path / "one.csv"
    one = watch(
        str(bundle),
        str(v["stained"]),
        WatchConfig(events=str(single_ev), scores=str(single_sc), min_consecutive=2),
    )
    assert one.cameras == [] and "camera" not in _events(single_ev)[0]
    mine = [
        {k: e[k] for k in ("type", "alert_id", "frame", "peak_frame")}
        for e in events
        if e["camera"] == "stained"
    ]
    theirs = [
        {k: e[k] for k in ("type", "alert_id", "frame", "peak_frame")} for e in _events(single_ev)
    ]
    assert mine == theirs
    a = np.array([float(r["score"]) for r in rows if r["camera"] == "stained"])
    b = np.array([float(r["score"]) for r in csv.DictReader(single_sc.open())])
    # batches mix cameras differently than one camera's batches: float32 sums in another
    # order, and the CSV's 6 significant digits
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_a_camera_that_drops_for_good_does_not_stop_the_others(cams, tmp_path, capsys):
    root, bundle, v = cams
    live = read_video(v["clean"])
    ev = tmp_path / "ev.jsonl"
    # the IP camera sends 20 frames, then refuses every connection for the rest of the run
    with MjpegCamera(live, fps=25.0, drop_after=20, down_s=3600.0) as cam:
        args = [str(bundle), "--source", cam.url, "--source", str(v["stained"])]
        args += ["--camera-id", "gate", "--camera-id", "line2", "--events", str(ev)]
        args += ["--min-consecutive", "2", "--reconnect-attempts", "1"]
        args += ["--reconnect-max-delay", "0.2", "--json"]
        code = main(args)
    s = json.loads(capsys.readouterr().out)
    assert code == 3  # a source was lost: the exit-code table's "source failed"
    per = {c["camera"]: c for c in s["cameras"]}
    assert per["gate"]["error"] and "gave up" in per["gate"]["error"]
    assert 1 <= per["gate"]["frames_scored"] <= 21
    assert per["line2"]["error"] is None  # the other camera ran to its end
    assert per["line2"]["frames_scored"] == len(read_video(v["stained"]))
    assert "gate:" in s["error"]
    starts = [e for e in _events(ev) if e["type"] == "alert_start"]
    assert {e["camera"] for e in starts} == {"line2"} and len(starts) == len(STAINS)


def test_a_bad_source_is_named(cams, tmp_path, capsys):
    root, bundle, v = cams
    missing = tmp_path / "nope.avi"
    args = [str(bundle), "--source", str(v["clean"]), "--source", str(missing), "--headless"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "camera nope" in err and str(missing) in err and "Traceback" not in err
    empty = tmp_path / "empty.streams"
    empty.write_text("# nothing here\n\n")
    assert main([str(bundle), "--source", str(empty)]) == 2
    assert "found no source in it" in capsys.readouterr().err
    args = [str(bundle), "--source", str(v["clean"]), "--source", str(v["short"])]
    assert main(args + ["--camera-id", "only-one"]) == 2
    assert "--camera-id: expected one id per source (2), found 1" in capsys.readouterr().err
    # the sources open, the bundle does not: a message, and every opened source closed
    nob = [str(tmp_path / "no_bundle"), "--source", str(v["clean"]), "--source", str(v["short"])]
    assert main(nob) == 2
    err = capsys.readouterr().err
    assert "no_bundle" in err and "Traceback" not in err


def test_camera_ids_and_sources_files(tmp_path):
    f = tmp_path / "a.streams"
    f.write_text("0\nrtsp://user@10.0.0.5:554/live/main\n/data/line 1.mp4\n/x/line_1.mp4\n")
    got = expand_sources(["/v/a.avi", str(f)])
    assert got == [
        "/v/a.avi",
        "0",
        "rtsp://user@10.0.0.5:554/live/main",
        "/data/line 1.mp4",
        "/x/line_1.mp4",
    ]
    # ids are file-, topic- and label-safe, unique, and no credentials leak into them
    assert camera_ids(got) == ["a", "cam0", "10.0.0.5_554_live_main", "line_1", "line_1-2"]


@pytest.fixture(scope="module")
def tiny(textile_dirs, tmp_path_factory):
    """The small scene of the sink tests (tiny real model) and a clean second camera."""
    root = tmp_path_factory.mktemp("tiny")
    bundle, stained = make_scene(root, textile_dirs["nominal"])
    clean = write_video(root / "door.avi", frames(textile_dirs["nominal"], 40, 300, seed=9))
    return bundle, stained, clean


def test_sinks_and_metrics_carry_the_camera(tiny, tmp_path):
    pytest.importorskip("paho.mqtt", reason="pip install 'dn2[serve]'")
    from dn2.runtime.watch.serve import start_server
    from dn2.runtime.watch.sinks import build_event_sinks

    from brokers import Broker, Receiver, Subscriber, have_mosquitto

    if not have_mosquitto():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    bundle, stained, clean = tiny
    broker = Broker(tmp_path / "broker").start()
    sub, rx = Subscriber(broker.port), Receiver()
    live = start_server("127.0.0.1:0", {})
    try:
        assert sub.ready.wait(10)
        sinks = build_event_sinks(
            mqtt=f"mqtt://127.0.0.1:{broker.port}/plant",
            webhooks=[rx.url],
            camera_id="box",
            spool_dir=str(tmp_path / "spool"),
        )
        cfg = WatchConfig(min_consecutive=2, camera_id=("door", "line"))
        s = watch(str(bundle), [str(clean), str(stained)], cfg, sinks=sinks, live=live)
        import urllib.request

        with urllib.request.urlopen(live.url.rstrip("/") + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        n = 2 * len(STAINS)  # the stained camera's alerts, start and end each
        assert s.events == n and s.unwritten == [] and s.sink_backlog == {x.name: 0 for x in sinks}
        assert sub.wait(lambda x: len(x.events()) >= n, 20)
        got = [m for m in sub.messages if m[0].endswith("/events")]
        assert {t for t, _, _ in got} == {"plant/line/events"}  # the camera's own topic
        assert all(p["camera_id"] == "line" == p["camera"] for _, p, _ in got)
        assert len(rx.bodies) == n and all(b["camera_id"] == "line" for b in rx.bodies)
        # idempotency keys stay unique although alert ids count per camera
        assert all(b["_key"].startswith(f"{s.run_id}:line:") for b in rx.bodies)
        assert len({b["_key"] for b in rx.bodies}) == n
        assert 'dn2_camera_frames_read_total{camera="door"} 40.0' in metrics
        assert f'dn2_camera_frames_read_total{{camera="line"}} {len(read_video(stained))}.0' in (
            metrics
        )
    finally:
        live.close()
        rx.close()
        sub.close()
        broker.stop()


def test_streams_benchmark_runs_both_variants(tiny, tmp_path):
    """bench.watch --streams on the small scene: both variants and the live run happen, each
    camera is counted; the figure itself lives in BENCHMARKS.md, not here."""
    from dn2.runtime.detector import Detector
    from dn2.tools.bench.watch_streams import streams_bench, streams_goal, streams_table

    bundle, stained, clean = tiny
    det = Detector.load(str(bundle), batch_size=4)
    streams = [read_video(stained)[:30], read_video(clean)[:30], read_video(clean)[10:40]]
    r = streams_bench(det, streams, tmp_path, 4, repeats=2, live_fps=20.0, live_frames=12)
    assert len(r["one_fps"]) == len(r["many_fps"]) == 2 and r["streams"] == 3
    assert r["ratio"] == pytest.approx(r["many_median"] / r["one_median"])
    assert sorted(r["live"]) == ["live0", "live1", "live2"]
    assert all(c["frames"] + c["dropped"] == 12 for c in r["live"].values())
    g = streams_goal(r)
    assert g["target"] == 0.9 and g["met"] == (r["ratio"] >= 0.9)
    assert set(g["per_camera_p95_ms"]) == set(r["live"])
    text = streams_table(r, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert "3 streams / one: ratio of the medians" in text and "| live2 |" in text
