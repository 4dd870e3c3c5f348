"""Camera variants of a ``--ray`` fit's still images, made and embedded on the cluster.

A local fit makes the variants (``dn2.runtime.augment.embed_variants``) in chunks of
``augment.VARIANT_CHUNK`` files, each chunk seeded with ``seed + its first index``. Here
every chunk is one dataset row and one block, made by an actor from the same files with the
same seed, so a ``--ray`` fit holds the variants a local fit of the same images holds (up to
float32 round-off of the batches) while the codec round trips and the second embedding pass
run on the workers, not on the driver.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, Sequence, Tuple

import numpy as np

from .augment import VARIANT_CHUNK, augment_files
from .ray_embed import EmbedActor, embed_to_shards, load_shards


class VariantActor(EmbedActor):
    """An EmbedActor fed chunks of files: one output row per camera variant, named by the
    index of its original in the fit's list of still images."""

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        t0 = time.perf_counter()
        origins, parts = [], []
        for start, paths, copies, seed in zip(
            batch["start"], batch["paths"], batch["copies"], batch["seed"]
        ):
            variants, orig = augment_files(json.loads(str(paths)), int(copies), int(seed))
            if variants:
                parts.append(self.emb.embed_images(variants))
                origins += [str(int(start) + o) for o in orig]
        n = len(origins)
        busy = np.zeros(n)
        busy[:1] = time.perf_counter() - t0
        return {
            "path": np.asarray(origins, dtype=object),
            "ok": np.ones(n, bool),
            "embedding": np.vstack(parts) if parts else np.zeros((0, self.emb.dim), np.float32),
            "error": np.asarray([""] * n, dtype=object),
            "actor": np.full(n, os.getpid(), np.int64),
            "busy_s": busy,
        }


def embed_variants_on_ray(
    model_path, paths: Sequence[str], copies: int, seed: int, out_dir, **pool
) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """(variant embeddings [M, D], index into ``paths`` of each one's original, the shard
    index with its images/s) for the still images ``paths`` of a fit, on the connected
    cluster; the chunks and seeds of ``augment.embed_variants``."""
    starts = list(range(0, len(paths), VARIANT_CHUNK))
    columns = {
        "start": starts,
        "paths": [json.dumps([str(p) for p in paths[s : s + VARIANT_CHUNK]]) for s in starts],
        "copies": [int(copies)] * len(starts),
        "seed": [int(seed) + s for s in starts],
    }
    info = embed_to_shards(
        model_path,
        list(paths),
        out_dir,
        actor=VariantActor,
        columns=columns,
        total=int(copies) * len(paths),
        block_rows=1,
        **pool,
    )
    x, origin, _ = load_shards(out_dir)
    return x, np.asarray([int(o) for o in origin], np.int64), info
