"""Helpers for the watch tests: real video files written by OpenCV from real images.

Frames come from real photographs (the textile set of PyPI conformal-clip-data); "anomalies"
are drawn onto real frames the way a stain or a foreign object would appear on the web.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np

from dn2.tools.videoio import read_video, write_video  # noqa: F401 (the tests' helpers too)


def load_frames(folder: Path, n: int, size: int = 160, start: int = 0) -> List[np.ndarray]:
    """``n`` real images from ``folder`` (sorted names from ``start``), resized to size x size."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    files = files[start : start + n]
    if len(files) < n:
        raise ValueError(f"{folder} holds {len(files) + start} images, {n + start} needed")
    out = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert img is not None, p
        out.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
    return out


def stain(img: np.ndarray, seed: int) -> np.ndarray:
    """A dark oily stain with a bright scratch across it: a visible local defect."""
    rng = np.random.default_rng(seed)
    out = img.copy()
    h, w = out.shape[:2]
    cx, cy = int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 3, 2 * h // 3))
    axes = (int(w * 0.22), int(h * 0.14))
    cv2.ellipse(out, (cx, cy), axes, float(rng.integers(0, 180)), 0, 360, (20, 25, 30), -1)
    cv2.line(
        out,
        (0, int(rng.integers(0, h))),
        (w - 1, int(rng.integers(0, h))),
        (250, 250, 250),
        max(2, w // 40),
    )
    return out


class MjpegCamera:
    """A real IP camera stand-in: an HTTP server streaming JPEG frames (multipart MJPEG).

    OpenCV reads it through FFmpeg exactly like an IP camera URL. It serves ``frames`` in order
    at ``fps``; after frame ``drop_after`` (if set) it cuts the connection and refuses new ones
    for ``down_s`` seconds, then the next connection continues with the following frame, so
    no frame of the camera's timeline is lost unless the client misses it. ``partial=True``:
    the cut falls in the middle of the next frame (its first half is sent, then the connection
    dies, as a camera losing power does); that frame is sent whole after the reconnection.
    """

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        fps: float = 25.0,
        drop_after: int = None,
        down_s: float = 1.0,
        quality: int = 95,
        partial: bool = False,
    ):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.jpegs = [
            cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
            for f in frames
        ]
        self.fps, self.drop_after, self.down_s = fps, drop_after, down_s
        self.partial = partial
        self.next = 0  # next frame to serve
        self.down_until = 0.0
        self.connections = 0
        self.refused = 0
        self.finished = threading.Event()
        cam = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                import time

                if time.monotonic() < cam.down_until:
                    cam.refused += 1
                    self.send_error(503, "camera rebooting")
                    return
                cam.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace;boundary=frame")
                self.end_headers()
                t0 = time.monotonic()
                sent = 0
                try:
                    while cam.next < len(cam.jpegs):
                        jpg = cam.jpegs[cam.next]
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(jpg) + jpg + b"\r\n"
                        )
                        self.wfile.flush()
                        cam.next += 1
                        sent += 1
                        if cam.drop_after is not None and cam.next == cam.drop_after + 1:
                            cam.drop_after = None
                            cam.down_until = time.monotonic() + cam.down_s
                            if cam.partial and cam.next < len(cam.jpegs):
                                nxt = cam.jpegs[cam.next]
                                self.wfile.write(
                                    b"--frame\r\nContent-Type: image/jpeg\r\n"
                                    b"Content-Length: %d\r\n\r\n" % len(nxt) + nxt[: len(nxt) // 2]
                                )
                                self.wfile.flush()
                            self.close_connection = True
                            return
                        delay = t0 + sent / cam.fps - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                except (BrokenPipeError, ConnectionResetError):
                    return
                cam.finished.set()
                # the camera ran out of footage: stay silent, as a frozen camera would
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MjpegCamera:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def texture_crops(
    image: np.ndarray, n: int, size: int = 160, crop: int = 200, seed: int = 0
) -> List[np.ndarray]:
    """``n`` random crops of a real texture photograph (e.g. skimage's grass), size x size."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        y, x = int(rng.integers(0, h - crop)), int(rng.integers(0, w - crop))
        out.append(
            cv2.resize(
                image[y : y + crop, x : x + crop], (size, size), interpolation=cv2.INTER_AREA
            )
        )
    return out


def interleave(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> List[np.ndarray]:
    """a0 b0 a1 b1 ...: a normal stream that alternates between two modes."""
    out = []
    for x, y in zip(a, b):
        out += [x, y]
    return out


def camera_frames(
    pieces: Sequence[np.ndarray],
    path: Path,
    fourcc: str = "MJPG",
    sigma: float = 3.0,
    width: int = 0,
    seed: int = 0,
) -> List[np.ndarray]:
    """``pieces`` as a camera delivers them: each centred in a 16:9 frame between its
    neighbours, independent Gaussian sensor noise of ``sigma`` levels per channel, written with
    OpenCV's real ``fourcc`` writer (MJPG / mp4v: colour conversion, chroma subsampling, codec
    blur) and read back. Returns the decoded frames."""
    rng = np.random.default_rng(seed)
    h = pieces[0].shape[0]
    width = width or (h * 16 // 9)
    side = (width - h) // 2
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (width, h))
    assert vw.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    n = len(pieces)
    for i, im in enumerate(pieces):
        left, right = pieces[(i - 1) % n], pieces[(i + 1) % n]
        f = np.concatenate([left[:, h - side :], im, right[:, : width - h - side]], axis=1)
        if sigma:
            f = np.clip(f + rng.normal(0.0, sigma, f.shape), 0, 255).astype(np.uint8)
        vw.write(np.ascontiguousarray(f))
    vw.release()
    return read_video(path)


def line_video(
    path: Path,
    nominal: Sequence[str],
    n_frames: int,
    fps: float = 30.0,
    fourcc: str = "MJPG",
    sigma: float = 2.0,
    defects: Sequence[str] = (),
    seed: int = 0,
    move_frames: int = 8,
    dwell_frames: int = 22,
):
    """A production line of real pieces (the demo's renderer) through a real ``fourcc`` writer
    with per-channel sensor noise. Returns (path, ground-truth defect ranges)."""
    from dn2.tools.demo.video import Piece, PieceImages, ground_truth, plan_line, render_frame

    plan = plan_line(
        list(nominal),
        [Piece(p, "global") for p in defects],
        n_frames,
        n_defects=len(defects),
        seed=seed,
        fps=fps,
        move_frames=move_frames,
        dwell_frames=dwell_frames,
    )
    images, rng = PieceImages(plan.height), np.random.default_rng(seed)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (plan.width, plan.height))
    assert vw.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for t in range(n_frames):
        f = render_frame(plan, t, images)
        if sigma:
            f = np.clip(f + rng.normal(0.0, sigma, f.shape), 0, 255).astype(np.uint8)
        vw.write(f)
    vw.release()
    return Path(path), ground_truth(plan)
