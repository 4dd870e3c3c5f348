"""Does decoding in worker threads overlap the model? img/s of Embedder.embed_paths per setting.

    python -m dn2.tools.bench.embed MODEL.onnx [IMAGES...] [--threads 2] [--batch 8]
                                    [--workers 0 1 2] [--repeat 2]

Without IMAGES it writes 32 real 1280x720 JPEG frames (scikit-image photos, shifted) to a temp
folder. Prints img/s for each ``decode_workers`` value (0 = decode in the calling thread, so
no overlap), best of ``--repeat`` passes, and the decode+prepare and model costs measured alone.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import List

import numpy as np


def frames(folder: str, n: int = 32) -> List[str]:
    import cv2
    import skimage

    d = os.path.join(os.path.dirname(skimage.__file__), "data")
    srcs = [
        cv2.imread(os.path.join(d, f))
        for f in ("retina.jpg", "hubble_deep_field.jpg", "motorcycle_left.png", "coffee.png")
    ]
    out = []
    for i in range(n):
        img = cv2.resize(
            np.roll(srcs[i % 4], 7 * i, axis=1), (1280, 720), interpolation=cv2.INTER_CUBIC
        )
        p = os.path.join(folder, f"frame{i:03d}.jpg")
        cv2.imwrite(p, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(p)
    return out


def main(argv=None) -> int:
    from dn2.runtime.embedder import Embedder
    from dn2.runtime.images import find_images, prepare, read_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("images", nargs="*")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = find_images(args.images)[0] if args.images else frames(tmp)
        emb = Embedder(args.model, threads=args.threads, batch_size=args.batch)
        print(f"{len(paths)} images, {emb}, cpu count {os.cpu_count()}")
        for w in args.workers:
            emb.decode_workers = w
            best = 0.0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                emb.embed_paths(paths)
                best = max(best, len(paths) / (time.perf_counter() - t0))
            print(f"decode_workers {w}: {best:6.1f} img/s")
        t0 = time.perf_counter()
        crops = [prepare(read_image(p), emb.rule) for p in paths]
        dec = (time.perf_counter() - t0) / len(paths)
        x = np.stack(crops)
        t0 = time.perf_counter()
        emb.embed_batch(x)
        model = (time.perf_counter() - t0) / len(paths)
        print(
            f"alone: decode+prepare {1000 * dec:.1f} ms/img, model {1000 * model:.1f} ms/img "
            f"-> no-overlap bound {1 / (dec + model):.1f} img/s, "
            f"perfect-overlap bound {1 / max(dec, model):.1f} img/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
