"""The status server while a real video is watched: /healthz, /metrics (parsed by
prometheus-client), /stream (read by OpenCV as MJPEG), /latest.jpg, and the live page in a real
headless Chromium, whose chart and frame must move while the video plays."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from dn2.runtime.config import WatchConfig
from dn2.runtime.errors import Dn2Error
from dn2.runtime.watch.loop import watch

from sinkscene import H, W, make_scene
from videos import read_video, write_video

pytest.importorskip("prometheus_client", reason="pip install 'dn2[serve]'")
from dn2.runtime.watch.serve import start_server  # noqa: E402
from dn2.runtime.watch.serve.server import parse_bind  # noqa: E402

BROWSER = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def scene(textile_dirs, tmp_path_factory):
    bundle, clip = make_scene(tmp_path_factory.mktemp("scene"), textile_dirs["nominal"])
    frames = read_video(clip)
    long = write_video(clip.parent / "long.avi", frames * 5, fps=25.0)  # 22 s played live
    return bundle, long


class Running:
    """watch() on its own thread, realtime, with the status server; stopped on exit."""

    def __init__(self, bundle, clip, tmp, config=None):
        self.live = start_server("127.0.0.1:0", config or {}, snapshots=str(tmp / "snaps"))
        self.stop = threading.Event()
        self.summary = None
        kw = dict(
            config=WatchConfig(
                events=str(tmp / "ev.jsonl"),
                snapshots=str(tmp / "snaps"),
                min_consecutive=2,
                realtime=True,
            ),
            live=self.live,
            stop=self.stop,
        )
        self.t = threading.Thread(target=self._run, args=(bundle, clip, kw), daemon=True)
        self.t.start()
        self.url = self.live.url

    def _run(self, bundle, clip, kw):
        self.summary = watch(str(bundle), str(clip), **kw)

    def wait_for(self, pred, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.1)
        return False

    def get(self, path, headers=None):
        req = urllib.request.Request(self.url.rstrip("/") + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()

    def close(self):
        self.stop.set()
        self.t.join(timeout=30)
        self.live.close()


@pytest.fixture
def running(scene, tmp_path):
    r = Running(*scene, tmp_path)
    yield r
    r.close()


def test_health_metrics_latest_and_stream(running):
    assert running.wait_for(lambda: running.live.scored >= 10)
    code, _, body = running.get("/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    from prometheus_client.parser import text_string_to_metric_families

    _, hdr, text = running.get("/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    val = {s.name: s.value for f in fams.values() for s in f.samples if not s.labels}
    assert val["dn2_frames_read_total"] >= val["dn2_frames_scored_total"] >= 10
    assert val["dn2_frames_dropped_total"] == 0 and val["dn2_fps"] > 0
    assert val["dn2_latency_seconds_count"] >= 10
    assert val["dn2_normalised_score_count"] >= 10
    st = running.live.state()
    assert st["norm_score"] == pytest.approx(st["score"] / st["threshold"], rel=1e-6)
    state = {s.labels["state"]: s.value for s in fams["dn2_source_state"].samples}
    assert state["running"] == 1 and sum(state.values()) == 1
    assert "dn2_sink_backlog" in fams and "dn2_alerts" in fams
    _, hdr, jpg = running.get("/latest.jpg")
    img = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (H, W, 3) and hdr["Content-Type"] == "image/jpeg"
    cap = cv2.VideoCapture(running.url + "stream")  # OpenCV reads it as an MJPEG camera
    got = []
    for _ in range(4):
        ok, f = cap.read()
        assert ok
        got.append(f)
    cap.release()
    assert all(f.shape == (H, W, 3) for f in got)
    assert any(np.abs(got[0].astype(int) - g.astype(int)).mean() > 1 for g in got[1:])


def _chromium(args, timeout=60):
    cmd = [
        BROWSER,
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",
        "--user-data-dir=" + args.pop(0),
    ]
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(BROWSER is None, reason="no chromium installed (apt-get install chromium)")
def test_live_page_in_headless_chromium_updates(running, tmp_path):
    assert running.wait_for(lambda: running.live.scored >= 5)

    def dom():
        p = _chromium(
            [str(tmp_path / "profile"), "--virtual-time-budget=2500", "--dump-dom", running.url]
        )
        pts = re.search(r'id="chart"[^>]*data-points="(\d+)"', p.stdout)
        seq = re.search(
            r'id="frame"[^>]*data-seq="(-?\d+)"|data-seq="(-?\d+)"[^>]*id="frame"', p.stdout
        )
        assert pts and seq, p.stdout[-2000:] + p.stderr[-2000:]
        scored = re.search(r'id="scored">(\d+)<', p.stdout)
        return int(pts.group(1)), int(seq.group(1) or seq.group(2)), int(scored.group(1))

    first = dom()
    assert running.wait_for(lambda: running.live.scored >= first[2] + 25)
    second = dom()
    assert first[0] > 0 and second[0] > first[0]  # the chart grew
    assert second[1] > first[1] > 0  # a newer frame was fetched
    assert second[2] > first[2]
    assert running.wait_for(lambda: len(running.live.alerts) >= 2)  # one alert with snapshot
    shot = tmp_path / "live-page.png"
    p = _chromium(
        [
            str(tmp_path / "profile2"),
            "--virtual-time-budget=3000",
            "--window-size=1280,760",
            f"--screenshot={shot}",
            running.url,
        ]
    )
    img = cv2.imread(str(shot))
    assert img is not None, p.stderr[-2000:]
    assert img.shape[:2] == (760, 1280)
    # the dashed threshold line (#f44) and the score line (#4af) were drawn
    b, g, r = img[..., 0].astype(int), img[..., 1].astype(int), img[..., 2].astype(int)
    assert ((r > 200) & (g < 100) & (b < 100)).sum() > 50
    assert ((b > 200) & (g > 130) & (r < 100)).sum() > 50
    if os.environ.get("DN2_SAVE_SCREENSHOT"):  # how docs/live-page.png was made
        shutil.copy(shot, DOCS / "live-page.png")


def test_token_guards_everything_but_healthz(scene, tmp_path):
    r = Running(*scene, tmp_path, config={"token": "s3cret"})
    try:
        assert r.wait_for(lambda: r.live.scored >= 2)
        assert r.get("/healthz")[0] == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            r.get("/metrics")
        assert e.value.code == 401
        assert r.get("/metrics", {"Authorization": "Bearer s3cret"})[0] == 200
        assert r.get("/api/state?token=s3cret")[0] == 200
        with pytest.raises(urllib.error.HTTPError):
            r.get("/snapshots/..%2Fev.jsonl?token=s3cret")
    finally:
        r.close()
    assert r.summary is not None and r.summary.stopped


def test_bind_defaults_to_localhost():
    assert parse_bind("8080") == ("127.0.0.1", 8080)
    assert parse_bind("0.0.0.0:9000") == ("0.0.0.0", 9000)
    with pytest.raises(Dn2Error, match="HOST"):
        parse_bind("localhost:http")
