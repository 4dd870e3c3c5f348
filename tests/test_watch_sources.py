"""dn2-watch sources and the reader thread, on real video files, folders and an HTTP stream."""

from __future__ import annotations

import shutil
import threading
import time

import cv2
import numpy as np
import pytest

from dn2.runtime.watch.foldersource import FolderSource
from dn2.runtime.watch.reader import Backoff, FrameQueue, Reader
from dn2.runtime.watch.sources import (
    CaptureSource,
    Source,
    SourceError,
    SourceFailure,
    classify,
    open_source,
)

from videos import MjpegCamera, load_frames, read_video, write_video


@pytest.fixture(scope="module")
def frames(textile_dirs):
    return load_frames(textile_dirs["nominal"], 40, size=96)


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.avi", frames, fps=20.0)


def drain(source, stride=1, queue_size=1000, consume_delay=0.0, backoff=None, max_frames=None):
    """Run a Reader over ``source``; return (frames in arrival order, reader)."""
    q, stop = FrameQueue(queue_size), threading.Event()
    r = Reader(source, q, stop, stride=stride, backoff=backoff, max_frames=max_frames)
    r.start()
    got = []
    while True:
        batch = q.get_batch(4, timeout=0.2)
        if batch is None:
            break
        got.extend(batch)
        if consume_delay and batch:
            time.sleep(consume_delay)
    r.join(5)
    return got, r, q


def test_spec_classification():
    assert classify(0) == classify("2") == "camera"
    assert classify("rtsp://10.0.0.5:554/stream1") == "url"
    assert classify("HTTP://cam/mjpg") == "url"
    assert (
        classify("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink") == "gstreamer"
    )
    assert classify("/some/video.mp4") == "file"


@pytest.mark.parametrize(
    "spec,message",
    [
        ("9", "cannot open camera index 9"),
        ("http://127.0.0.1:1/nothing.mjpg", "cannot open stream"),
        ("videotestsrc ! videoconvert ! appsink", "GStreamer"),
        ("{tmp}/missing.mp4", "expected a video file, .* found no such path"),
        ("{tmp}/text.avi", "not a video OpenCV can decode"),
        ("{tmp}/empty_folder", "holds no images"),
    ],
)
def test_a_source_that_cannot_open_says_why(spec, message, tmp_path):
    (tmp_path / "text.avi").write_text("not a video")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty_folder" / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=message):
        open_source(spec.format(tmp=tmp_path))


def test_file_reads_every_frame_with_source_timestamps(video, frames):
    ref = read_video(video)
    assert len(ref) == len(frames)
    got, r, q = drain(open_source(str(video)), consume_delay=0.02, queue_size=3)
    assert [f.index for f in got] == list(range(len(ref)))  # files never drop, even when slow
    assert q.dropped == 0 and r.stats.error is None
    assert all(np.array_equal(f.image, ref[f.index]) for f in got)
    assert [f.timestamp for f in got] == pytest.approx([i / 20.0 for i in range(len(ref))])


def test_stride_keeps_every_nth_frame(video):
    ref = read_video(video)
    got, _, _ = drain(open_source(str(video)), stride=3)
    assert [f.index for f in got] == list(range(0, len(ref), 3))
    assert all(np.array_equal(f.image, ref[f.index]) for f in got)


def test_folder_plays_images_in_name_order(frames, tmp_path):
    for i, f in enumerate(frames[:6]):
        cv2.imwrite(str(tmp_path / f"img_{i:03d}.png"), f)
    src = open_source(str(tmp_path), folder_fps=5.0)
    assert isinstance(src, FolderSource) and not src.live
    got, _, _ = drain(src)
    assert len(got) == 6 and all(np.array_equal(g.image, f) for g, f in zip(got, frames))
    assert got[-1].timestamp == pytest.approx(1.0)


def test_live_source_drops_oldest_frames_and_counts_them(video):
    """A file replayed in real time is a live source: a slow scorer loses old frames, not new."""
    src = open_source(str(video), realtime=True)
    assert src.live
    got, r, q = drain(src, queue_size=2, consume_delay=0.2)
    idx = [f.index for f in got]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert q.dropped > 0 and len(got) + q.dropped == r.stats.frames == 40
    assert idx[-1] == 39  # the newest frame survives; the oldest were dropped
    assert all(f.timestamp > 1e9 for f in got)  # wall clock for live sources


class BreaksOnce(Source):
    """A video file that fails after ``fail_at`` frames and then refuses to reopen twice."""

    def __init__(self, path, fail_at, refusals=2):
        self.inner = CaptureSource(str(path), "file", live=False)
        self.name, self.live = f"flaky {path}", False
        self.fail_at, self.refusals, self.n = fail_at, refusals, 0
        self.open_times = []

    def open(self):
        self.open_times.append(time.monotonic())
        if self.n >= self.fail_at and self.refusals:
            self.refusals -= 1
            raise SourceError("device busy")
        self.inner.open()

    def read(self):
        if self.n == self.fail_at and self.refusals:
            raise SourceFailure("connection reset")
        img = self.inner.read()
        self.n += img is not None
        return img

    def close(self):
        self.inner.close()

    @property
    def fps(self):
        return self.inner.fps


def test_failure_mid_stream_reconnects_with_backoff_and_loses_no_frame(video):
    ref = read_video(video)
    src = BreaksOnce(video, fail_at=15)
    src.open()
    backoff = Backoff(initial=0.05, factor=2.0, max_delay=0.15, max_attempts=6)
    got, r, _ = drain(src, backoff=backoff)
    # the file reopens at the frame where it broke: every frame once, in order, none made up
    assert [f.index for f in got] == list(range(len(ref)))
    assert all(np.array_equal(f.image, ref[f.index]) for f in got)
    assert r.stats.failures == 3 and r.stats.reconnects == 1  # 1 read + 2 refused opens
    gaps = np.diff(src.open_times[1:])
    # waits 0.05, 0.10, 0.15 (0.20 capped) before the three reopen attempts. A wait never ends
    # early (5 ms slack for clock granularity) but may overshoot on a busy CI box: loose tops.
    assert 0.095 <= gaps[0] < 0.3 and 0.145 <= gaps[1] < 0.35


def test_folder_whose_file_vanishes_for_a_while_loses_nothing(frames, tmp_path):
    for i, f in enumerate(frames[:10]):
        cv2.imwrite(str(tmp_path / f"img_{i:03d}.png"), f)
    src = open_source(str(tmp_path))
    away = tmp_path.parent / "away.png"
    shutil.move(tmp_path / "img_004.png", away)  # being rewritten by the uploader
    threading.Timer(0.4, lambda: shutil.move(away, tmp_path / "img_004.png")).start()
    got, r, _ = drain(src, backoff=Backoff(initial=0.1, max_delay=0.2, max_attempts=10))
    assert [f.index for f in got] == list(range(10))
    assert all(np.array_equal(g.image, f) for g, f in zip(got, frames))
    assert r.stats.failures >= 2 and r.stats.skipped_items == 0


def test_folder_with_a_corrupt_image_skips_it_reports_it_and_goes_on(frames, tmp_path):
    for i, f in enumerate(frames[:5]):
        cv2.imwrite(str(tmp_path / f"img_{i:03d}.png"), f)
    (tmp_path / "img_002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    got, r, _ = drain(
        open_source(str(tmp_path)), backoff=Backoff(initial=0.01, max_delay=0.02, max_attempts=2)
    )
    assert [f.index for f in got] == [0, 1, 3, 4]
    assert r.stats.skipped_items == 1 and "img_002.png" in r.stats.recent_problems[0][0]


def test_http_camera_that_drops_reconnects_and_no_placeholder_is_queued(frames):
    """A real MJPEG-over-HTTP stream read by OpenCV/FFmpeg; the camera cuts out for 0.6 s."""
    with MjpegCamera(frames, fps=50.0, drop_after=19, down_s=0.6) as cam:
        src = open_source(cam.url)
        assert src.live
        got, r, q = drain(src, backoff=Backoff(initial=0.1, max_delay=0.4), max_frames=40)
    assert cam.refused >= 1 and cam.connections == 2
    assert r.stats.reconnects == 1 and r.stats.failures >= 2 and q.dropped == 0
    assert [f.index for f in got] == list(range(40))
    # every queued frame is the camera's real frame (JPEG q95 round trip), never a blank
    for f in got:
        err = np.abs(f.image.astype(int) - frames[f.index].astype(int)).mean()
        assert err < 4.0, (f.index, err)  # q95 JPEG: mean abs error ~1-2 grey levels
