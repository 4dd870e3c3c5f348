"""Which OpenCV resize path agrees best with torchvision's Resize + CenterCrop, at what cost?

    python -m dn2.tools.studies.resize [--arch efficientnet_lite0] [--reps 200]

Reference: PIL decode -> torchvision ``Resize(R)`` (bilinear, antialias) -> ``CenterCrop(C)``
-> the torch trunk (dn2.export graph: uint8 NHWC BGR in, pooled embedding out). Candidates:
OpenCV decode (``dn2.runtime.images.read_image``) -> one of the resize paths below -> the same
trunk. Prints, per path: worst and mean cosine to the reference over real photos (scikit-image
samples, crops of them, textile images, a 1280x720 frame), pixel differences, and the CPU time
per 1280x720 and 1920x1080 frame (one thread). The runtime's choice (``dn2.runtime.resize``)
is the result of this table. A second table does the same for the opt-in reduced-scale JPEG
decode (``read_image(draft_side=...)``, ``dn2-fit --jpeg-draft``) at several margins, on
quality-90 JPEG versions of the photos; ``DRAFT_MARGIN`` in ``dn2.runtime.images`` is its result.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

from dn2.runtime.images import read_image
from dn2.runtime.resize import center_box, center_crop_resize

Method = Callable[[np.ndarray, int, int], np.ndarray]


def _full(interp: int) -> Method:
    def run(img, r, c):
        b = center_box(*img.shape[:2], r, c)
        out = cv2.resize(img, (b.new_w, b.new_h), interpolation=interp)
        top, left = int(round((b.new_h - c) / 2.0)), int(round((b.new_w - c) / 2.0))
        return np.ascontiguousarray(out[top : top + c, left : left + c])

    return run


def _crop_first(interp: int, rounding=round) -> Method:
    """Integer source rectangle nearest to the exact box, resized alone to c x c."""

    def run(img, r, c):
        b = center_box(*img.shape[:2], r, c)
        x0, y0, x1, y1 = (int(rounding(v)) for v in (b.x0, b.y0, b.x1, b.y1))
        sx = (b.x1 - b.x0) / c
        up = cv2.INTER_LINEAR if sx <= 1.0 else interp  # PIL bilinear == plain bilinear upscaling
        return cv2.resize(img[y0:y1, x0:x1], (c, c), interpolation=up)

    return run


def blur_warp(img, r, c):
    """Triangle prefilter (PIL's kernel sampled at integer taps) + bilinear warpAffine."""
    h, w = img.shape[:2]
    b = center_box(h, w, r, c)
    sx, sy = (b.x1 - b.x0) / c, (b.y1 - b.y0) / c

    def tri(s):
        if s <= 1.0:
            return np.ones(1, np.float32)
        t = np.arange(-int(np.ceil(s)), int(np.ceil(s)) + 1)
        k = np.clip(1.0 - np.abs(t) / s, 0.0, None)
        return (k / k.sum()).astype(np.float32)

    kx, ky = tri(sx), tri(sy)
    rx, ry = len(kx) // 2 + 2, len(ky) // 2 + 2
    x0, y0 = max(int(np.floor(b.x0)) - rx, 0), max(int(np.floor(b.y0)) - ry, 0)
    x1, y1 = min(int(np.ceil(b.x1)) + rx, w), min(int(np.ceil(b.y1)) + ry, h)
    reg = cv2.sepFilter2D(img[y0:y1, x0:x1], -1, kx, ky, borderType=cv2.BORDER_REPLICATE)
    m = np.array([[sx, 0.0, b.x0 - x0 + 0.5 * sx - 0.5], [0.0, sy, b.y0 - y0 + 0.5 * sy - 0.5]])
    return cv2.warpAffine(
        reg,
        m,
        (c, c),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def pil_on_opencv_pixels(img, r, c):
    """Ceiling: PIL itself on the OpenCV-decoded pixels (not a runtime option: no PIL there)."""
    from PIL import Image
    from torchvision import transforms as T

    t = T.Compose([T.Resize(r, antialias=True), T.CenterCrop(c)])
    return np.asarray(t(Image.fromarray(img[:, :, ::-1])))[:, :, ::-1].copy()


METHODS: Dict[str, Method] = {
    "full INTER_LINEAR (no antialias)": _full(cv2.INTER_LINEAR),
    "full INTER_AREA": _full(cv2.INTER_AREA),
    "crop-first INTER_AREA, rect floor": _crop_first(cv2.INTER_AREA, np.floor),
    "crop-first INTER_AREA, rect round": _crop_first(cv2.INTER_AREA, round),
    "crop-first triangle blur + warpAffine": blur_warp,
    "crop-first PIL weights, banded GEMM [dn2]": center_crop_resize,
    "(PIL on the OpenCV-decoded pixels)": pil_on_opencv_pixels,
}


# (photo, centre crop w x h): real pixels at shorter-side scale factors 1.1 .. 5.5 to 256
CROPS = [
    ("retina.jpg", 1411, 1411),
    ("retina.jpg", 1100, 700),
    ("retina.jpg", 900, 900),
    ("hubble_deep_field.jpg", 1000, 600),
    ("hubble_deep_field.jpg", 700, 872),
    ("motorcycle_left.png", 741, 420),
    ("motorcycle_right.png", 600, 500),
    ("coffee.png", 600, 380),
    ("astronaut.png", 512, 400),
    ("astronaut.png", 333, 480),
    ("rocket.jpg", 500, 427),
    ("chelsea.png", 451, 290),
    ("ihc.png", 400, 512),
]


def photos(tmpdir: str) -> List[Tuple[str, str]]:
    """(name, path) of real photos: scikit-image samples as shipped, lossless centre crops of
    them at other scale factors, four textile images, and a 1280x720 frame."""
    import skimage

    d = os.path.join(os.path.dirname(skimage.__file__), "data")
    names = [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "hubble_deep_field.jpg",
        "ihc.png",
        "motorcycle_left.png",
        "retina.jpg",
        "rocket.jpg",
    ]
    out = [(n, os.path.join(d, n)) for n in names]
    for i, (n, w, h) in enumerate(CROPS):
        im = cv2.imread(os.path.join(d, n))
        y, x = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
        p = os.path.join(tmpdir, f"crop{i}_{n.split('.')[0]}_{w}x{h}.png")
        cv2.imwrite(p, im[y : y + h, x : x + w])
        out.append((os.path.basename(p), p))
    try:
        import conformal_clip_data as ccd

        for sub in ("nominal_dir", "global_dir"):
            out += [
                (os.path.basename(p), p)
                for p in sorted(glob.glob(str(getattr(ccd, sub)()) + "/*"))[:2]
            ]
    except ImportError:
        pass
    return out + [("retina_720p.png", frame_720p(tmpdir))]


def reference_crop(path: str, r: int, c: int) -> np.ndarray:
    from PIL import Image
    from torchvision import transforms as T

    t = T.Compose(
        [T.Resize(r, interpolation=T.InterpolationMode.BILINEAR, antialias=True), T.CenterCrop(c)]
    )
    with Image.open(path) as im:
        return np.asarray(t(im.convert("RGB")))[:, :, ::-1].copy()  # RGB -> BGR


def frame_720p(tmpdir: str) -> str:
    """A real 1280x720 photo: centre 16:9 crop of retina.jpg (1411 px), area-downscaled."""
    import skimage

    src = cv2.imread(os.path.join(os.path.dirname(skimage.__file__), "data", "retina.jpg"))
    h = int(src.shape[1] * 9 / 16)
    y = (src.shape[0] - h) // 2
    frame = cv2.resize(src[y : y + h], (1280, 720), interpolation=cv2.INTER_AREA)
    path = os.path.join(tmpdir, "retina_720p.png")
    cv2.imwrite(path, frame)
    return path


def load_graph(arch: str):
    from dn2.export.archs import get_arch
    from dn2.export.graph import build_graph
    from dn2.export.weights import load_weights

    spec = get_arch(arch)
    return build_graph(spec, load_weights(spec, "imagenet", offline=True).model)


def embed(graph, crops: List[np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return graph(torch.from_numpy(np.stack(crops))).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def time_ms(fn: Method, img: np.ndarray, r: int, c: int, reps: int) -> float:
    """CPU ms per call (process CPU time, all threads: the cost, and robust on a shared VM
    where wall time mostly measures the neighbours), median of ``reps``."""
    fn(img, r, c)
    ts = []
    for _ in range(reps):
        t0 = time.process_time()
        fn(img, r, c)
        ts.append(time.process_time() - t0)
    return 1000.0 * float(np.median(ts))


def main(argv=None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args(argv)
    from dn2.runtime.modelmeta import ResizeRule

    rule = ResizeRule.for_input_size(args.input_size)
    r, c = rule.resize_to, rule.crop
    cv2.setNumThreads(1)
    graph = load_graph(args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        items = photos(tmp)
        refs = [reference_crop(p, r, c) for _, p in items]
        decoded = [read_image(p) for _, p in items]
    ref = embed(graph, refs)
    frame = decoded[-1]
    fhd = cv2.resize(frame, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    print(
        f"{args.arch}, resize {r} + crop {c}, {len(items)} real photos, shorter-side scale "
        f"factors {min(min(i.shape[:2]) for i in decoded) / r:.2f}.."
        f"{max(min(i.shape[:2]) for i in decoded) / r:.2f}; cv2 threads 1"
    )
    print(
        f"{'path':44s} {'min cos':>8s} {'mean cos':>9s} {'720p cos':>9s} {'mean|px|':>8s} "
        f"{'max|px|':>7s} {'cpu ms/720p':>11s} {'/1080p':>7s}"
    )
    for name, fn in METHODS.items():
        crops = [fn(im, r, c) for im in decoded]
        cos = cosine(embed(graph, crops), ref)
        diff = [np.abs(a.astype(np.int16) - b) for a, b in zip(crops, refs)]
        print(
            f"{name:44s} {cos.min():8.5f} {cos.mean():9.5f} {cos[-1]:9.5f} "
            f"{np.mean([d.mean() for d in diff]):8.3f} {max(d.max() for d in diff):7d} "
            f"{time_ms(fn, frame, r, c, args.reps):11.2f} {time_ms(fn, fhd, r, c, args.reps):7.2f}"
        )
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    dec = time_ms(lambda *_: cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED), frame, r, c, args.reps)
    print(f"for scale: decoding the 720p frame as a quality-90 JPEG costs {dec:.2f} cpu ms")
    worst = np.argsort(cosine(embed(graph, [center_crop_resize(i, r, c) for i in decoded]), ref))
    print("dn2 path, 3 lowest cosines:", ", ".join(items[i][0] for i in worst[:3]))
    with tempfile.TemporaryDirectory() as tmp:
        jpegs = jpeg_versions([n for n, _ in items], decoded, tmp)
        jpeg_draft_table(graph, jpegs, frame, r, c, args.reps)
    return 0


def jpeg_versions(
    names: List[str], decoded: List[np.ndarray], tmpdir: str
) -> List[Tuple[str, str]]:
    """Quality-90 JPEGs of every photo above, of the 720p frame (the last one) at 1024x576 /
    1920x1080 / 3840x2160, and 16 dn2-bench frames (1280x720)."""
    from dn2.tools.bench.frames import make_frames

    out = []
    for name, img in zip(names, decoded):
        q = os.path.join(tmpdir, name.rsplit(".", 1)[0] + "_q90.jpg")
        cv2.imwrite(q, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append((os.path.basename(q), q))
    frame = decoded[-1]
    for w, h in ((1024, 576), (1920, 1080), (3840, 2160)):
        q = os.path.join(tmpdir, f"frame_{w}x{h}.jpg")
        cv2.imwrite(
            q,
            cv2.resize(frame, (w, h), interpolation=cv2.INTER_CUBIC),
            [cv2.IMWRITE_JPEG_QUALITY, 90],
        )
        out.append((os.path.basename(q), q))
    return out + [
        (os.path.basename(p), str(p)) for p in make_frames(os.path.join(tmpdir, "bench"), 16)
    ]


def jpeg_draft_table(
    graph, jpegs: List[Tuple[str, str]], frame: np.ndarray, r: int, c: int, reps: int
) -> None:
    """Reduced-scale JPEG decode (``read_image(draft_side=...)``) at several margins: cosine of
    embeddings to the torchvision pipeline on the same JPEG files, and the decode + resize cost
    of ``frame`` as a quality-90 JPEG at 720p and 1080p."""
    from dn2.runtime.images import DRAFT_MARGIN, draft_scale

    ref = embed(graph, [reference_crop(p, r, c) for _, p in jpegs])
    full = cosine(embed(graph, [center_crop_resize(read_image(p), r, c) for _, p in jpegs]), ref)
    print(
        f"\nJPEG draft decode: {len(jpegs)} quality-90 JPEGs; cosine to torchvision on the same "
        f"files; full decode: min {full.min():.5f} mean {full.mean():.5f}"
    )
    print(
        f"{'margin':>6s} {'reduced':>8s} {'min cos':>8s} {'mean cos':>9s} "
        f"{'min cos reduced':>15s} {'mean cos reduced':>16s}  lowest"
    )
    sizes = [cv2.imread(p).shape[1::-1] for _, p in jpegs]  # (w, h)
    for margin in (1.0, 1.25, 1.5, 2.0):
        side = int(np.ceil(r * margin))
        cos = cosine(
            embed(
                graph, [center_crop_resize(read_image(p, draft_side=side), r, c) for _, p in jpegs]
            ),
            ref,
        )
        red = [i for i, wh in enumerate(sizes) if draft_scale(*wh, side) > 1]
        cr = cos[red] if red else np.ones(1)
        print(
            f"{margin:6.2f} {len(red):4d}/{len(jpegs):<3d} {cos.min():8.5f} {cos.mean():9.5f} "
            f"{cr.min():15.5f} {cr.mean():16.5f}  {jpegs[int(np.argmin(cos))][0]}"
        )
    for w, h in ((1280, 720), (1920, 1080)):
        img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_CUBIC)
        enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        side = int(np.ceil(r * DRAFT_MARGIN))
        t_full = time_ms(lambda *_: center_crop_resize(read_image(enc), r, c), img, r, c, reps)
        t_draft = time_ms(
            lambda *_: center_crop_resize(read_image(enc, draft_side=side), r, c), img, r, c, reps
        )
        print(
            f"{w}x{h} JPEG: decode + resize {t_full:.2f} cpu ms full, {t_draft:.2f} draft "
            f"(margin {DRAFT_MARGIN:g})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
