"""Does L2 normalisation of the embeddings help on camera-like defect data too?

    python -m dn2.tools.studies.l2norm MODEL.onnx [--seeds 0,1,2] [--threads 2]

The textile set shipped by PyPI ``conformal-clip-data`` (nominal / global / local defects),
split as tests/test_textile.py does for seed 0 (200 nominal for training, 200 other nominal
held out, 100 global and 100 local defects), plus further seeds. Each image is embedded once;
per seed, ROC-AUC of held-out nominal vs global and vs local defects, k = 2, with and without
L2 normalisation. Prints one JSON line per (seed, l2norm) and the mean difference. Fashion-MNIST
(the paper's dataset) is measured by ``dn2-eval`` with and without ``--no-l2norm``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from dn2.runtime.bank import build_bank
from dn2.runtime.embedder import Embedder
from dn2.runtime.images import prepare, read_image
from dn2.runtime.scoring import knn_score, l2normalize
from dn2.runtime.threshold import roc_auc

N_TRAIN, N_HELD, N_DEFECT = 200, 200, 100


class _Cached:
    def __init__(self, model: str, threads: Optional[int]):
        self.emb = Embedder(model, threads=threads)
        self.cache: Dict[str, np.ndarray] = {}

    def __call__(self, paths: Sequence[str]) -> np.ndarray:
        miss = [p for p in paths if p not in self.cache]
        for i in range(0, len(miss), 32):
            chunk = miss[i : i + 32]
            x = np.stack([prepare(read_image(p), self.emb.meta.resize) for p in chunk])
            self.cache.update(zip(chunk, self.emb.embed_batch(x)))
        return np.stack([self.cache[p] for p in paths])


def study(model: str, seeds: Sequence[int], threads: Optional[int] = None) -> List[Dict]:
    import conformal_clip_data as ccd

    nominal = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    glob_ = sorted(Path(ccd.global_dir()).glob("*.jpg"))
    local = sorted(Path(ccd.local_dir()).glob("*.jpg"))
    embed = _Cached(model, threads)
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)  # the same draws, in the same order, as the test
        pick = rng.permutation(len(nominal))
        train = embed([str(nominal[i]) for i in pick[:N_TRAIN]])
        held = embed([str(nominal[i]) for i in pick[N_TRAIN : N_TRAIN + N_HELD]])
        g = embed([str(glob_[i]) for i in rng.choice(len(glob_), N_DEFECT, replace=False)])
        lo = embed([str(local[i]) for i in rng.choice(len(local), N_DEFECT, replace=False)])
        for l2 in (False, True):
            f = l2normalize if l2 else (lambda a: a)
            bank = build_bank(f(train), index="exact")
            s_held, s_g, s_l = (knn_score(bank, f(x), 2) for x in (held, g, lo))
            rows.append(
                {
                    "seed": seed,
                    "l2norm": l2,
                    "auroc_global": round(roc_auc(s_held, s_g), 4),
                    "auroc_local": round(roc_auc(s_held, s_l), 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.l2norm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="dn2 ONNX model (dn2-export)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated split seeds")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    try:
        import conformal_clip_data  # noqa: F401
    except ImportError:
        print("the textile data is missing: pip install 'dn2[tools]'", file=sys.stderr)
        return 2
    rows = study(a.model, [int(s) for s in a.seeds.split(",")], a.threads)
    for key in ("auroc_global", "auroc_local"):
        on = np.mean([r[key] for r in rows if r["l2norm"]])
        off = np.mean([r[key] for r in rows if not r["l2norm"]])
        print(f"{key}: mean without L2 norm {off:.4f}, with {on:.4f}, difference {on - off:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
