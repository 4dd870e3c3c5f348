"""Output faults never lose an alert nor crash a run: events written before anything else can
fail, run ids keep runs apart, nothing is overwritten without --force, a FIFO never hangs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dn2.runtime.config import WatchConfig
from dn2.runtime.errors import Dn2Error
from dn2.runtime.watch.cli import main
from dn2.runtime.watch.loop import watch

from sinkscene import STAINS, N, make_scene


@pytest.fixture(scope="module")
def scene(textile_dirs, tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), textile_dirs["nominal"])


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_scene_alerts_once_per_stain(scene, tmp_path):
    bundle, clip = scene
    s = watch(
        str(bundle), str(clip), WatchConfig(events=str(tmp_path / "ev.jsonl"), min_consecutive=2)
    )
    ev = lines(tmp_path / "ev.jsonl")
    starts = [e["frame"] for e in ev if e["type"] == "alert_start"]
    assert s.alerts == len(STAINS) == len(starts)
    for (a, b), f in zip(STAINS, starts):
        assert a <= f < b  # each alert opens inside its stain
    assert {e["run_id"] for e in ev} == {s.run_id} and s.unwritten == []


def test_snapshots_come_with_an_annotated_copy(scene, tmp_path):
    import cv2
    import numpy as np

    bundle, clip = scene
    watch(
        str(bundle),
        str(clip),
        WatchConfig(
            events=str(tmp_path / "ev.jsonl"), snapshots=str(tmp_path / "snaps"), min_consecutive=2
        ),
    )
    ev = lines(tmp_path / "ev.jsonl")
    assert ev and all(e["norm_score"] is None or e["norm_score"] > 0 for e in ev)
    for e in ev:
        assert e["peak_norm_score"] == pytest.approx(e["peak_score"] / e["threshold"], rel=1e-5)
        assert e["peak_norm_score"] > 1.0  # an alert's peak is above the threshold
        raw, ann = cv2.imread(e["snapshot"]), cv2.imread(e["snapshot_annotated"])
        assert ann is not None and ann.shape == raw.shape
        # the overlay is drawn over the raw frame: the header box (black) and the alert border
        assert ann[6:12, 6:40].mean() < raw[6:12, 6:40].mean() - 20
        assert np.abs(ann[:, 0].astype(int) - (0, 0, 255)).max() < 60  # red border, JPEG'd


def test_scores_file_csv_and_jsonl(scene, tmp_path):
    bundle, clip = scene
    s = watch(
        str(bundle),
        str(clip),
        WatchConfig(
            scores=str(tmp_path / "s.csv"), min_consecutive=2, events=str(tmp_path / "ev.jsonl")
        ),
    )
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == N and [int(r["frame"]) for r in rows] == list(range(N))
    r = rows[STAINS[0][0] + 3]
    assert float(r["norm_score"]) == pytest.approx(float(r["score"]) / s.threshold, rel=1e-4)
    assert r["decision"] == "ALERT" and r["alert_id"] == "1" and r["map_peak"] == ""
    assert rows[0]["alert_id"] == "" and rows[0]["decision"] == "normal"
    assert rows[0]["time"][10] == "T" and rows[0]["time"][-6] in "+-"  # ISO with offset
    monos = [float(r["mono_s"]) for r in rows]
    assert monos == sorted(monos)
    # JSON lines by extension; an existing scores file is never overwritten without --force
    watch(str(bundle), str(clip), WatchConfig(scores=str(tmp_path / "s.jsonl"), max_frames=5))
    assert [json.loads(x)["frame"] for x in open(tmp_path / "s.jsonl")] == list(range(5))
    with pytest.raises(Dn2Error, match="pass force"):
        watch(str(bundle), str(clip), WatchConfig(scores=str(tmp_path / "s.jsonl"), max_frames=5))
    watch(
        str(bundle),
        str(clip),
        WatchConfig(scores=str(tmp_path / "s.jsonl"), max_frames=3, force=True),
    )
    assert len(open(tmp_path / "s.jsonl").readlines()) == 3


def test_events_to_dev_full_keep_going_and_say_so(scene, tmp_path, capsys):
    bundle, clip = scene
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    rc = main(
        [
            str(bundle),
            "--source",
            str(clip),
            "--events",
            "/dev/full",
            "--headless",
            "--min-consecutive",
            "2",
            "--stats-every",
            "0",
            "--scores",
            str(tmp_path / "s.csv"),
        ]
    )
    out = capsys.readouterr()
    assert rc == 4 and "Traceback" not in out.err
    assert (
        f"NOT WRITTEN: events file /dev/full: {2 * len(STAINS)} of {2 * len(STAINS)}" in out.out
        and "No space left on device" in out.out
    )
    assert len(open(tmp_path / "s.csv").readlines()) == N + 1  # the run went on to its end


def test_snapshot_folder_removed_mid_run_event_still_written(scene, tmp_path):
    bundle, clip = scene
    snaps = tmp_path / "snaps"
    seen = []

    def on_event(ev):  # after the first alert's start, the folder is replaced by a file
        seen.append(ev)
        if len(seen) == 1:
            for f in snaps.iterdir():
                f.unlink()
            snaps.rmdir()
            snaps.write_text("not a folder")

    s = watch(
        str(bundle),
        str(clip),
        WatchConfig(events=str(tmp_path / "ev.jsonl"), snapshots=str(snaps), min_consecutive=2),
        on_event=on_event,
    )
    ev = lines(tmp_path / "ev.jsonl")
    assert len(ev) == 2 * len(STAINS)  # every alert recorded
    assert ev[0]["snapshot"] and ev[0]["snapshot_error"] is None
    assert all(
        e["snapshot"] is None and "cannot write snapshot" in e["snapshot_error"] for e in ev[1:]
    )
    assert any("snapshots:" in u for u in s.unwritten)


def test_snapshot_folder_removed_is_made_again(scene, tmp_path):
    bundle, clip = scene
    snaps = tmp_path / "snaps"

    def on_event(ev):
        if ev["type"] == "alert_start" and ev["alert_id"] == 1:
            for f in snaps.iterdir():
                f.unlink()
            snaps.rmdir()

    watch(
        str(bundle),
        str(clip),
        WatchConfig(events=str(tmp_path / "ev.jsonl"), snapshots=str(snaps), min_consecutive=2),
        on_event=on_event,
    )
    ev = lines(tmp_path / "ev.jsonl")
    assert all(os.path.exists(e["snapshot"]) for e in ev[1:])


def test_runs_never_overwrite_each_others_evidence(scene, tmp_path):
    bundle, clip = scene
    kw = WatchConfig(
        events=str(tmp_path / "ev.jsonl"), snapshots=str(tmp_path / "snaps"), min_consecutive=2
    )
    s1 = watch(str(bundle), str(clip), kw.replace(output_video=str(tmp_path / "out.avi")))
    first = {e["snapshot"]: os.path.getmtime(e["snapshot"]) for e in lines(tmp_path / "ev.jsonl")}
    video_size = os.path.getsize(tmp_path / "out.avi")
    with pytest.raises(Dn2Error, match="exists.*pass force"):
        watch(str(bundle), str(clip), kw.replace(output_video=str(tmp_path / "out.avi")))
    s2 = watch(str(bundle), str(clip), kw)
    ev = lines(tmp_path / "ev.jsonl")
    assert s1.run_id != s2.run_id and len(ev) == 4 * len(STAINS)
    assert {e["run_id"] for e in ev} == {s1.run_id, s2.run_id}
    for snap, mtime in first.items():  # run 1's events still point at run 1's images
        assert os.path.getmtime(snap) == mtime and s1.run_id in os.path.basename(snap)
    assert len({e["snapshot"] for e in ev}) == len(first) * 2
    assert os.path.getsize(tmp_path / "out.avi") == video_size
    watch(
        str(bundle),
        str(clip),
        WatchConfig(output_video=str(tmp_path / "out.avi"), force=True, max_frames=5),
    )
    assert os.path.getsize(tmp_path / "out.avi") < video_size


def test_output_video_under_an_unwritable_path_is_a_message(scene, tmp_path, capsys):
    bundle, clip = scene
    (tmp_path / "file").write_text("x")
    rc = main(
        [
            str(bundle),
            "--source",
            str(clip),
            "--headless",
            "--output-video",
            str(tmp_path / "file" / "sub" / "out.mp4"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "--output-video" in err
    # a missing folder is made
    assert (
        main(
            [
                str(bundle),
                "--source",
                str(clip),
                "--headless",
                "--max-frames",
                "4",
                "--output-video",
                str(tmp_path / "new" / "dir" / "out.avi"),
            ]
        )
        == 0
    )
    assert os.path.getsize(tmp_path / "new" / "dir" / "out.avi") > 0


def test_events_fifo_without_reader_is_an_error_not_a_hang(scene, tmp_path):
    bundle, clip = scene
    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "dn2.runtime.watch.cli",
            str(bundle),
            "--source",
            str(clip),
            "--headless",
            "--events",
            str(fifo),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "FIFO with no reader" in p.stderr
    assert "Traceback" not in p.stderr


def test_events_fifo_with_reader_and_sigterm_flushes(scene, tmp_path):
    """A reader on the FIFO gets every event; SIGTERM mid-run ends the run with the open
    alert closed and flushed (the loop is slowed by --realtime so the signal lands mid-run)."""
    bundle, clip = scene
    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dn2.runtime.watch.cli",
            str(bundle),
            "--source",
            str(clip),
            "--headless",
            "--events",
            str(fifo),
            "--realtime",
            "--min-consecutive",
            "2",
            "--stats-every",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    got, deadline = b"", time.monotonic() + 60
    while b"alert_start" not in got and time.monotonic() < deadline:
        try:
            got += os.read(rd, 65536)
        except BlockingIOError:
            time.sleep(0.05)
    assert b"alert_start" in got, "no event reached the FIFO"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    while True:
        try:
            chunk = os.read(rd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        got += chunk
    os.close(rd)
    ev = [json.loads(x) for x in got.decode().splitlines()]
    assert p.returncode == 0 and "Traceback" not in err
    assert [e["type"] for e in ev].count("alert_start") == [e["type"] for e in ev].count(
        "alert_end"
    )
    assert ev[-1]["type"] == "alert_end"


def test_plot_draws_any_run(scene, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from dn2.tools.plot import main as plot_main

    bundle, clip = scene
    ev = tmp_path / "ev.jsonl"
    watch(
        str(bundle), str(clip), WatchConfig(events=str(ev), max_frames=20)
    )  # another run, same file
    s = watch(
        str(bundle),
        str(clip),
        WatchConfig(scores=str(tmp_path / "s.csv"), events=str(ev), min_consecutive=2),
    )
    assert (
        plot_main([str(tmp_path / "s.csv"), "--events", str(ev), "-o", str(tmp_path / "p.png")])
        == 0
    )
    out = capsys.readouterr().out
    assert f"{N} scores, {len(STAINS)} alerts, threshold {s.threshold:.4g}" in out
    import cv2

    img = cv2.imread(str(tmp_path / "p.png"))
    assert img is not None and img.shape[1] > 800
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert plot_main([str(tmp_path / "bad.csv"), "-o", str(tmp_path / "q.png")]) == 2
    assert "expected dn2-watch --scores rows" in capsys.readouterr().err


def test_events_fifo_whose_reader_stopped_reading_never_stalls_the_run(scene, tmp_path, capsys):
    """The reader holds the FIFO open but reads nothing and the pipe is full: each event
    waits a moment, is counted as not written, and the run goes on to its end."""
    import fcntl

    bundle, clip = scene
    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    wr = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(wr, 1031, 4096)  # F_SETPIPE_SZ: a one-page pipe
    except OSError:
        pass
    try:
        while True:
            os.write(wr, b"x" * 512)
    except BlockingIOError:
        pass  # full
    rc = main(
        [
            str(bundle),
            "--source",
            str(clip),
            "--events",
            str(fifo),
            "--headless",
            "--min-consecutive",
            "2",
            "--stats-every",
            "0",
        ]
    )
    os.close(wr)
    os.close(rd)
    out = capsys.readouterr().out
    assert rc == 4 and f"{2 * len(STAINS)} of {2 * len(STAINS)} events not written" in out
    assert "the reader of the pipe is not reading" in out


def test_learned_bundle_is_not_replaced_without_force(scene, tmp_path):
    bundle, clip = scene
    keep = tmp_path / "learned"
    keep.mkdir()
    (keep / "dn2.json").write_text("{}")
    # the library names its parameters (the CLI maps them to --learn-bundle / --force)
    with pytest.raises(Dn2Error, match="learn_bundle .* pass force") as err:
        watch(str(bundle), str(clip), WatchConfig(learn="30f", learn_bundle=str(keep)))
    assert err.value.params == ("learn_bundle", "force")
    assert (keep / "dn2.json").read_text() == "{}"
