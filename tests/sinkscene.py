"""A small real scene for the sink / server tests: a tiny real ONNX model (tests/tiny_model.py),
a bundle fitted on real textile photos passed through the MJPG codec at 16:9, and a stained
clip with sensor noise whose alerts are known (frame ranges in STAINS)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tiny_model import make_tiny_model
from videos import read_video, stain, write_video

W, H = 192, 108  # 16:9, like a camera
STAINS = [(20, 30), (50, 60), (80, 90)]  # [a, b): three alerts in a 110-frame clip
N = 110


def frames(folder: Path, n: int, start: int, seed: int):
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    rng = np.random.default_rng(seed)
    out = []
    for p in files[start : start + n]:
        img = cv2.resize(cv2.imread(str(p)), (W, H), interpolation=cv2.INTER_AREA)
        noisy = img.astype(np.float32) + rng.normal(0, 3.0, img.shape)  # sensor noise
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def make_scene(root: Path, nominal: Path, model: Path = None):
    """(bundle, clip.avi): the bundle from 120 codec-passed normal frames, the clip from the
    next N frames with stains drawn over STAINS. ``model``: a dn2 model (default: the tiny
    one)."""
    from dn2.runtime.fit import fit_bundle

    root.mkdir(parents=True, exist_ok=True)
    model = model or make_tiny_model(root / "tiny.onnx")
    train = read_video(write_video(root / "train.avi", frames(nominal, 120, 0, seed=1)))
    bundle = fit_bundle(
        model,
        root / "bundle",
        embeddings=None,
        images=[str(_dump(root / "train", train))],
        progress=False,
    )
    clip = frames(nominal, N, 120, seed=2)
    for a, b in STAINS:
        for i in range(a, b):
            clip[i] = stain(clip[i], seed=a)
    return bundle, write_video(root / "clip.avi", clip, fps=25.0)


def _dump(folder: Path, imgs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(imgs):
        cv2.imwrite(str(folder / f"{i:04d}.png"), img)
    return folder
