"""Local fit vs ``fit --ray`` with 1 and 2 actors on the same images, in one run.

    python -m dn2.tools.bench.ray_fit MODEL IMAGES... --out DIR [--cpus 2] [--repeats 1]

For each configuration: wall seconds of the whole fit (Ray: cluster start, actor start-up,
embedding, shards, the local fit path, bundle), the embedding stage's img/s, and the bundle's
threshold relative to the local one. Configurations run interleaved (local, ray x1, ray x2,
local, ...) so machine load hits them alike. ``local``: one process, onnxruntime on all
``--cpus`` threads; ``ray-1``: one actor with ``--cpus`` threads; ``ray-2``: ``--cpus``
actors with one thread each. Prints one JSON line per run, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from dn2.runtime.bundle import read_manifest


def _load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def run_local(model, images, out: Path, cpus: int) -> dict:
    from dn2.runtime.embedder import Embedder
    from dn2.runtime.fit import fit_bundle
    from dn2.runtime.images import find_images

    files, _ = find_images(images)
    t0 = time.perf_counter()
    emb = Embedder(model, threads=cpus)
    t1 = time.perf_counter()
    res = emb.embed_paths(files)
    t2 = time.perf_counter()
    fit_bundle(
        model, out, embeddings=res.embeddings, names=res.paths, progress=False, source="images"
    )
    t3 = time.perf_counter()
    return {
        "embedded": len(res.paths),
        "embed_s": round(t2 - t1, 2),
        "embed_img_per_s": round(len(res.paths) / (t2 - t1), 2),
        "startup_s": round(t1 - t0, 2),
        "total_s": round(t3 - t0, 2),
    }


def run_ray(model, images, out: Path, cpus: int, actors: int, shards: Path) -> dict:
    import logging

    import ray

    from dn2.runtime.fit import fit_bundle
    from dn2.runtime.images import find_images
    from dn2.runtime.ray_embed import embed_to_shards, load_shards

    files, _ = find_images(images)
    t0 = time.perf_counter()
    ray.init(
        num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False
    )
    t1 = time.perf_counter()
    try:  # what fit_bundle_ray does, stage by stage
        info = embed_to_shards(
            model, files, shards, workers=actors, threads=cpus // actors, progress=False
        )
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    x, names, failed = load_shards(shards)
    fit_bundle(
        model, out, embeddings=x, names=names, embed_failed=failed, source="ray", progress=False
    )
    t3 = time.perf_counter()
    return {
        "embedded": len(info["paths"]),
        "embed_s": round(t2 - t1, 2),
        "embed_img_per_s": round(len(info["paths"]) / (t2 - t1), 2),
        "steady_img_per_s": round(info["steady_images_per_s"] or 0.0, 2),
        "per_actor_img_per_s": sorted(info["per_actor_images_per_s"].values()),
        "startup_s": round(t1 - t0, 2),
        "total_s": round(t3 - t0, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.ray_fit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = {}
    for rep in range(a.repeats):
        for name in ("local", "ray-1", "ray-2"):
            b = out / f"bundle-{name}-{rep}"
            shutil.rmtree(b, ignore_errors=True)
            load_before = _load()
            if name == "local":
                r = run_local(a.model, a.images, b, a.cpus)
            else:
                actors = 1 if name == "ray-1" else a.cpus
                r = run_ray(a.model, a.images, b, a.cpus, actors, out / f"shards-{name}")
            th = read_manifest(b).threshold.value
            thresholds.setdefault(rep, {})[name] = th
            base = thresholds[rep].get("local")
            row = {
                "config": name,
                "repeat": rep,
                **r,
                "threshold": th,
                "threshold_rel_diff_vs_local": None if base is None else abs(th - base) / base,
                "load_before": load_before,
                "load_after": _load(),
                "cpus": os.cpu_count(),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
