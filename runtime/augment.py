"""Banks that survive the camera: ``dn2-fit --augment camera``, the default for stills.

Each normal image gets ``copies`` variants made the way a camera path changes a picture:
a few percent of scale (the part's distance to the lens), brightness and contrast (light),
independent Gaussian and Poisson (shot) noise per channel (the sensor), then a round trip
through OpenCV's real video writers, MJPG and mp4v alternating: their BGR -> YUV conversion,
4:2:0 chroma subsampling, DCT quantisation and (mp4v) motion-compensated blur — not only
``cv2.imencode``, which keeps a gray image gray and so never shows the model the colour cast a
real video path makes. The variants' embeddings join the bank (``augment_into="bank"``, the
default: the threshold stays the one the stills calibrate), or the bank and the calibration
("both": each variant is calibrated in the duplicate group of its original,
``dn2.runtime.dupes``, so an image and its variant never vouch for each other; the variants'
higher scores raise the threshold), or only the calibration. Measured (BENCHMARKS.md "Camera
path"): "both" cost 14-23 points of defect recall, "bank" 0-2 of 120 defects. Seeded; the
settings are recorded in the manifest (``fit.augment``). ``augment="auto"``, the default, is
"camera" for the still images of a fit into an exact bank and "none" for video / stream
frames, k-means banks and rows given as embeddings (``--ray``): with it, every measured
condition met <= 1 false alert per 1000 frames, where the bank without variants gave 1.17 on
MJPG with sensor noise (BENCHMARKS.md "Camera path", four 3000-frame lines per condition).
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .errors import Dn2Error

AUGMENTS = ("auto", "none", "camera")
CODECS = (("MJPG", ".avi"), ("mp4v", ".mp4"))
SETTINGS = {
    "scale": 0.03,
    "brightness": 8.0,
    "contrast": 0.06,
    "gauss_sigma": (1.0, 4.0),
    "poisson_peak": 400.0,
    "codecs": [c for c, _ in CODECS],
    "fps": 10.0,
}


def check_option(augment: str) -> str:
    if augment not in AUGMENTS:
        raise Dn2Error(
            f"augment: expected one of {', '.join(AUGMENTS)}, found {augment!r}", param="augment"
        )
    return augment


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale, brightness, contrast and per-channel sensor noise (before the codec)."""
    import cv2

    h, w = img.shape[:2]
    s = 1.0 + rng.uniform(-SETTINGS["scale"], SETTINGS["scale"])
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), 0.0, s)
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    x = out.astype(np.float32)
    c = 1.0 + rng.uniform(-SETTINGS["contrast"], SETTINGS["contrast"])
    x = (x - x.mean()) * c + x.mean() + rng.uniform(-SETTINGS["brightness"], SETTINGS["brightness"])
    peak = SETTINGS["poisson_peak"]  # photons at full scale: shot noise grows with the signal
    x = rng.poisson(np.clip(x, 0, 255) / 255.0 * peak).astype(np.float32) * (255.0 / peak)
    x += rng.normal(0.0, rng.uniform(*SETTINGS["gauss_sigma"]), x.shape).astype(np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _round_trip(frames: List[np.ndarray], fourcc: str, ext: str) -> List[np.ndarray]:
    """Frames of one size written by the real ``fourcc`` writer and decoded back."""
    import cv2

    h, w = frames[0].shape[:2]
    fd, path = tempfile.mkstemp(suffix=ext, prefix="dn2-augment-")
    os.close(fd)
    try:
        vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), SETTINGS["fps"], (w, h))
        if not vw.isOpened():
            raise Dn2Error(
                f"augment camera: OpenCV cannot write {fourcc} video; expected an "
                "OpenCV build with FFMPEG video I/O (opencv-python-headless has it)",
                param="augment",
            )
        for f in frames:
            vw.write(f)
        vw.release()
        cap = cv2.VideoCapture(path)
        out = []
        while len(out) < len(frames):
            ok, f = cap.read()
            if not ok:
                break
            out.append(f)
        cap.release()
    finally:
        os.unlink(path)
    if len(out) != len(frames):
        raise Dn2Error(
            f"augment camera: the {fourcc} round trip gave {len(out)} of {len(frames)} frames back",
            param="augment",
        )
    return out


def camera_variants(
    images: Sequence[np.ndarray], copies: int = 1, seed: int = 0
) -> Tuple[List[np.ndarray], List[int]]:
    """(variants, index of each variant's original): ``copies`` per image, seeded."""
    rng = np.random.default_rng(seed)
    jobs: Dict[Tuple[int, int, int], List[Tuple[int, np.ndarray]]] = {}
    for c in range(int(copies)):
        for i, img in enumerate(images):
            codec = (i + c) % len(CODECS)
            key = (codec, img.shape[0], img.shape[1])
            jobs.setdefault(key, []).append((i, _jitter(img, rng)))
    variants: List[np.ndarray] = []
    origin: List[int] = []
    for (codec, _, _), items in sorted(jobs.items(), key=lambda kv: kv[0]):
        fourcc, ext = CODECS[codec]
        # pairs of frames: mp4v predicts each frame from the one before, so a variant is
        # encoded right after a copy of itself (the blur of a still part, not of another one)
        doubled = [f for _, v in items for f in (v, v)]
        back = _round_trip(doubled, fourcc, ext)[1::2]
        variants += back
        origin += [i for i, _ in items]
    return variants, origin


def augment_files(paths: Sequence[str], copies: int = 1, seed: int = 0):
    """Decode ``paths`` and make their camera variants: (variants, origin index into paths)."""
    from .images import read_image

    imgs, idx = [], []
    for j, p in enumerate(paths):
        try:
            imgs.append(read_image(p))
            idx.append(j)
        except Dn2Error:
            continue
    variants, origin = camera_variants(imgs, copies, seed)
    return variants, [idx[o] for o in origin]


def embed_variants(
    embedder, paths: Sequence[str], copies: int = 1, seed: int = 0, chunk: int = 256
) -> Tuple[np.ndarray, np.ndarray]:
    """Embeddings of the camera variants of ``paths`` ([M, D]) and each one's original
    (index into ``paths``), ``chunk`` files at a time (memory: one chunk of decoded images)."""
    parts, origin = [], []
    for c0 in range(0, len(paths), chunk):
        variants, orig = augment_files(paths[c0 : c0 + chunk], copies, seed + c0)
        if variants:
            parts.append(embedder.embed_images(variants))
            origin += [c0 + o for o in orig]
    if not parts:
        return np.zeros((0, embedder.dim), np.float32), np.zeros(0, np.int64)
    return np.vstack(parts).astype(np.float32), np.asarray(origin, np.int64)


def resolve(augment: str, kmeans, has_stills: bool) -> str:
    """What ``augment`` means for this fit: "auto" (the default) is "camera" when there are
    still images to vary and the bank is exact (a k-means bank calibrates on folds of its
    own rows, where bank-only variants cannot go), "none" otherwise; the rest as given."""
    check_option(augment)
    if augment == "auto":
        return "camera" if has_stills and kmeans is None else "none"
    return augment


def augment_rows(embedder, x, names, temporal, cfg, say=lambda m: None):
    """The fit's normal rows with the camera variants of its image rows after them (when
    ``cfg.augment`` resolves to "camera", :func:`resolve`): (x, names, temporal [N] bool,
    origin [N] (-1 or the row of the variant's original), manifest ``fit.augment`` or None).
    ``embedder``: None when the rows came as embeddings (nothing to augment)."""
    temporal = np.zeros(len(x), bool) if temporal is None else np.asarray(temporal, bool)
    origin = np.full(len(x), -1, np.int64)
    real = np.flatnonzero(~temporal)
    has_stills = embedder is not None and real.size > 0
    if resolve(cfg.augment, cfg.kmeans, has_stills) != "camera" or embedder is None:
        return x, list(names), temporal, origin, None
    xa, orig = embed_variants(embedder, [names[i] for i in real], cfg.augment_copies, cfg.seed)
    origin = np.concatenate([origin, real[orig]])
    names = list(names) + [f"{names[real[o]]} (camera variant)" for o in orig]
    info = dict(
        SETTINGS,
        mode="camera",
        option=cfg.augment,
        copies=int(cfg.augment_copies),
        seed=int(cfg.seed),
        variants=int(len(xa)),
        into=cfg.augment_into,
    )
    into = {"both": "the bank and the calibration", "bank": "the bank only"}
    say(
        f"augment camera: {len(xa)} variants (MJPG / mp4v round trips, noise, scale, "
        f"light) join {into.get(cfg.augment_into, 'the calibration only')}"
    )
    return (
        np.vstack([x, xa]),
        names,
        np.concatenate([temporal, np.zeros(len(xa), bool)]),
        origin,
        info,
    )
