"""Damaged and truncated video files: every frame accounted for, frame numbers kept true.

Videos are written by OpenCV's real encoders (MJPG in AVI, mp4v in MP4); each frame's colour
encodes its number, so a frame returned under the wrong number is caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from dn2.runtime.fit import fit_bundle
from dn2.runtime.watch.reader import FrameQueue, Reader
from dn2.runtime.watch.sources import open_source

from tiny_model import make_tiny_model

N = 600


def frame_of(i: int) -> np.ndarray:
    f = np.zeros((96, 128, 3), np.uint8)
    f[:, :, 1] = (i % 32) * 8
    f[:, :, 2] = (i // 32) * 8
    f[:, :, 0] = 60 + np.random.default_rng(i).integers(0, 8, (96, 128), dtype=np.uint8)  # noise
    return f


def number_of(img: np.ndarray) -> int:
    g, r = float(np.median(img[:, :, 1])), float(np.median(img[:, :, 2]))
    return int(round(r / 8)) * 32 + int(round(g / 8))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("damage")
    out = {}
    for ext, fourcc in (("avi", "MJPG"), ("mp4", "mp4v")):
        p = d / f"clip.{ext}"
        w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*fourcc), 20.0, (128, 96))
        for i in range(N):
            w.write(frame_of(i))
        w.release()
        out[ext] = p
    return d, out


def damaged(src, dst, kind: str):
    b = bytearray(src.read_bytes())
    n = len(b)
    a = n // 2
    if kind == "random":
        b[a : a + n // 8] = np.random.default_rng(0).integers(0, 256, n // 8, np.uint8).tobytes()
    elif kind == "zeros":
        b[a : a + n // 20] = bytes(n // 20)
    elif kind == "truncated":
        b = b[:a]
    dst.write_bytes(bytes(b))
    return dst


def drain(path, stride=1):
    q, stop = FrameQueue(10_000), threading.Event()
    r = Reader(open_source(str(path)), q, stop, stride=stride)
    r.start()
    got = []
    while (batch := q.get_batch(64, timeout=0.5)) is not None:
        got.extend(batch)
    r.join(10)
    return got, r.stats


def test_an_intact_file_reads_every_frame_with_its_number(clips):
    _, c = clips
    got, st = drain(c["avi"])
    assert [f.index for f in got] == list(range(N)) and st.lost_frames == 0
    assert all(number_of(f.image) == f.index for f in got)


@pytest.mark.parametrize("kind", ["random", "zeros", "truncated"])
def test_a_damaged_avi_keeps_true_numbers_and_counts_what_is_lost(clips, tmp_path, kind):
    _, c = clips
    got, st = drain(damaged(c["avi"], tmp_path / f"{kind}.avi", kind))
    idx = [f.index for f in got]
    assert idx == sorted(set(idx))  # increasing, no number twice
    wrong = [(f.index, number_of(f.image)) for f in got if number_of(f.image) != f.index]
    assert not wrong, wrong[:5]
    assert len(got) + st.lost_frames == N  # every frame is read or counted as lost
    assert st.lost_frames > 0
    if kind != "truncated":  # the frames after the damage are read again
        assert idx[-1] == N - 1


def test_stride_on_a_damaged_file_keeps_true_numbers(clips, tmp_path):
    _, c = clips
    got, st = drain(damaged(c["avi"], tmp_path / "z.avi", "zeros"), stride=3)
    assert got and all(number_of(f.image) == f.index for f in got)
    assert got[-1].index >= N - 3


def test_a_damaged_mp4_never_reads_past_its_frames_silently(clips, tmp_path):
    # mp4v is predicted: a damaged GOP may decode to wrong pictures, which cannot be told
    # from the pixels; what must hold is that no frame is numbered twice or beyond the file
    _, c = clips
    got, st = drain(damaged(c["mp4"], tmp_path / "r.mp4", "random"))
    idx = [f.index for f in got]
    assert idx == sorted(set(idx)) and idx[-1] < N
    assert len(got) + st.lost_frames <= N


def test_dn2_watch_reports_lost_frames_in_summary_and_exit_code(clips, tmp_path):
    d, c = clips
    model = make_tiny_model(tmp_path / "tiny.onnx", dim=16)
    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    bundle = fit_bundle(model, tmp_path / "b", embeddings=x, progress=False)
    bad = damaged(c["avi"], tmp_path / "bad.avi", "random")
    exe = os.path.join(os.path.dirname(sys.executable), "dn2-watch")
    r = subprocess.run(
        [exe, str(bundle), "--source", str(bad), "--headless", "--json", "--stats-every", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 3, r.stderr[-500:]
    assert s["lost_frames"] > 0 and s["frames_read"] + s["lost_frames"] == N
    assert any("could not be read" in p for p in s["problems"])
    r = subprocess.run(
        [exe, str(bundle), "--source", str(c["avi"]), "--headless", "--json", "--stats-every", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and s["lost_frames"] == 0 and s["frames_read"] == N


def test_an_mjpeg_camera_dying_mid_frame_hands_over_only_complete_frames(tmp_path):
    # a real HTTP MJPEG server on 127.0.0.1 cuts the connection inside frame 20 and comes
    # back; the half JPEG is never a frame, and every frame handed over is the camera's own
    rng = np.random.default_rng(0)
    frames = [
        np.clip(rng.normal(128, 30, (96, 128, 3)), 0, 255).astype(np.uint8) for _ in range(40)
    ]
    from dn2.runtime.watch.reader import Backoff

    from videos import MjpegCamera

    with MjpegCamera(frames, fps=50.0, drop_after=19, down_s=0.4, partial=True) as cam:
        src = open_source(cam.url)
        q, stop = FrameQueue(1000), threading.Event()
        r = Reader(src, q, stop, backoff=Backoff(initial=0.1, max_delay=0.3), max_frames=40)
        r.start()
        got = []
        while (batch := q.get_batch(8, timeout=0.5)) is not None:
            got.extend(batch)
        r.join(5)
    assert cam.connections == 2 and r.stats.partial_frames == 1
    assert [f.index for f in got] == list(range(40))
    for f in got:  # q95 JPEG of noise: ~24 grey levels mean error; a shifted frame is ~40
        err = np.abs(f.image.astype(int) - frames[f.index].astype(int)).mean()
        assert err < 30, (f.index, err)
