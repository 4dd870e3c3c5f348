"""Video files for benchmarks and tests: write frames with OpenCV's MJPG encoder, read them back.

MJPG in .avi is lossy (every frame a JPEG keyframe, fast to seek), the way a camera's stream is.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 25.0) -> Path:
    """Write frames with cv2.VideoWriter (MJPG in .avi: every frame a keyframe, fast to seek)."""
    import cv2

    path = Path(path)
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
    if not vw.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG to {path}")
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def read_video(path: Path) -> List[np.ndarray]:
    """Every frame of a video file as OpenCV decodes it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames
