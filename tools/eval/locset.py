"""Build an offline localisation set from real images, seeded, in the MVTec AD / anomalib
``Folder`` layout:

    OUT/train/good/*.jpg                 normal textile images (PyPI conformal-clip-data)
    OUT/test/good/*.jpg                  held-out normal textile images
    OUT/test/object/*.jpg                held-out normal images with a real object pasted in
    OUT/test/texture/*.jpg               ... with a foreign real texture pasted in
    OUT/test/textile/*.jpg               ... with a real textile flaw pasted in
    OUT/ground_truth/<defect>/<name>_mask.png   255 where the paste is, 0 elsewhere

Defect crops are real pixels: ``object`` cuts a random blob (an ellipse with a wobbly edge) from a
scikit-image sample photo (astronaut, chelsea, coffee, rocket, coins, hubble_deep_field,
immunohistochemistry); ``texture`` from scikit-image's grass, gravel and brick textures;
``textile`` from a textile image of the set's *global*-defect folder (a flawed weave of the same
fabric: the subtle kind) — in every case pasted at a random place and size (``--min-size`` ..
``--max-size`` of the image's shorter side), with a one-pixel feathered edge. Test images are
written as JPEG quality 90 (a camera's codec), masks as PNG. Same seed, same set.

    python -m dn2.tools.eval.locset OUT [--train 200] [--good 100] [--per-defect 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

OBJECTS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
)
TEXTURES = ("grass", "gravel", "brick")
DEFECTS = ("object", "texture", "textile")
JPEG_QUALITY = 90


def _textile_dirs():
    try:
        import conformal_clip_data as ccd
    except ImportError:
        from dn2.runtime.errors import MissingExtraError

        raise MissingExtraError("conformal-clip-data", "tools", "the textile images") from None
    return Path(ccd.nominal_dir()), Path(ccd.global_dir())


def _objects(names=OBJECTS) -> List[np.ndarray]:
    import skimage.data

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            im = getattr(skimage.data, name)()
            im = np.repeat(im[:, :, None], 3, 2) if im.ndim == 2 else im[:, :, :3]
            out.append(np.ascontiguousarray(im[:, :, ::-1]))
    return out


def blob_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 [h, w] alpha in 0..1: an ellipse with a wobbly edge, feathered by a pixel."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ang = np.arctan2((yy - cy) / max(h, 1), (xx - cx) / max(w, 1))
    r = np.hypot((yy - cy) / (h / 2), (xx - cx) / (w / 2))
    wob = 1.0 + sum(
        rng.uniform(-0.12, 0.12) * np.cos(f * ang + rng.uniform(0, 2 * np.pi)) for f in (2, 3, 5)
    )
    a = (r <= 0.95 * wob).astype(np.float32)
    return cv2.GaussianBlur(a, (3, 3), 0.8)


def paste(
    base: np.ndarray, source: np.ndarray, rng: np.random.Generator, min_size: float, max_size: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Paste a random blob of ``source`` into ``base`` -> (image, uint8 mask 0/255)."""
    h, w = base.shape[:2]
    side = min(h, w)
    bh = int(rng.uniform(min_size, max_size) * side)
    bw = int(np.clip(bh * rng.uniform(0.6, 1.6), 6, w - 2))
    bh = int(np.clip(bh, 6, h - 2))
    sh, sw = source.shape[:2]
    scale = rng.uniform(0.5, 1.5) * max(bh / sh, bw / sw, 0.05)  # how much of the source shows
    ch, cw = min(sh, max(bh, int(bh / scale))), min(sw, max(bw, int(bw / scale)))
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = cv2.resize(source[y0 : y0 + ch, x0 : x0 + cw], (bw, bh), interpolation=cv2.INTER_AREA)
    a = blob_mask(bh, bw, rng)
    py, px = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    out = base.astype(np.float32)
    region = out[py : py + bh, px : px + bw]
    region[:] = region * (1 - a[..., None]) + crop.astype(np.float32) * a[..., None]
    mask = np.zeros((h, w), np.uint8)
    mask[py : py + bh, px : px + bw] = (a >= 0.5).astype(np.uint8) * 255
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


def build(
    out: str,
    train: int = 200,
    good: int = 100,
    per_defect: int = 100,
    seed: int = 0,
    min_size: float = 0.08,
    max_size: float = 0.25,
    log=print,
) -> Path:
    """Write the set to ``out`` (replaced if it exists); returns its path."""
    nominal, flawed = _textile_dirs()
    noms = sorted(nominal.glob("*.jpg"))
    flaws = sorted(flawed.glob("*.jpg"))
    need = train + good + per_defect * len(DEFECTS)
    if len(noms) < need:
        raise SystemExit(f"locset: expected at least {need} nominal images, found {len(noms)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(noms))
    root = Path(out)
    if root.exists():
        shutil.rmtree(root)
    for d in (
        ["train/good", "test/good"]
        + [f"test/{k}" for k in DEFECTS]
        + [f"ground_truth/{k}" for k in DEFECTS]
    ):
        (root / d).mkdir(parents=True)
    pick = [noms[i] for i in order]
    for p in pick[:train]:
        shutil.copyfile(p, root / "train/good" / p.name)
    for p in pick[train : train + good]:
        shutil.copyfile(p, root / "test/good" / p.name)
    objects, textures = _objects(), _objects(TEXTURES)
    rest = pick[train + good :]
    for j, kind in enumerate(DEFECTS):
        for i, p in enumerate(rest[j * per_defect : (j + 1) * per_defect]):
            base = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if kind == "object":
                src = objects[int(rng.integers(len(objects)))]
            elif kind == "texture":
                src = textures[int(rng.integers(len(textures)))]
            else:
                src = cv2.imread(str(flaws[int(rng.integers(len(flaws)))]), cv2.IMREAD_COLOR)
            img, mask = paste(base, src, rng, min_size, max_size)
            name = f"{kind}_{i:03d}"
            cv2.imwrite(
                str(root / f"test/{kind}" / f"{name}.jpg"),
                img,
                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
            )
            cv2.imwrite(str(root / f"ground_truth/{kind}" / f"{name}_mask.png"), mask)
    log(
        f"wrote {root}: train/good {train}, test/good {good}, "
        + ", ".join(f"test/{k} {per_defect}" for k in DEFECTS)
        + f" (seed {seed})"
    )
    return root


def paste_into(
    base: np.ndarray, kind: str, seed: int, min_size: float = 0.08, max_size: float = 0.25
) -> Tuple[np.ndarray, np.ndarray]:
    """One pasted defect of ``kind`` (object | texture) into ``base``, seeded: (image, mask)."""
    rng = np.random.default_rng(seed)
    srcs = _objects() if kind == "object" else _objects(TEXTURES)
    return paste(base, srcs[int(rng.integers(len(srcs)))], rng, min_size, max_size)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.eval.locset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out")
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--good", type=int, default=100)
    p.add_argument("--per-defect", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=float, default=0.08, help="fraction of the shorter side")
    p.add_argument("--max-size", type=float, default=0.25, help="fraction of the shorter side")
    a = p.parse_args(argv)
    build(a.out, a.train, a.good, a.per_defect, a.seed, a.min_size, a.max_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
