"""anomalib's PatchCore beside dn2's patch mode: the same textile images, the same backbone.

anomalib (``pip install anomalib``, not a dn2 dependency: install it into a separate venv)
supplies the algorithm: its ``PatchcoreModel`` (3x3 feature pooling, the two feature maps
concatenated at the stride-8 grid, its KCenterGreedy coreset at ``--ratio``, nearest-neighbour
patch scores and its re-weighted image score). The backbone is dn2's efficientnet_lite0 with its
ImageNet weights (the pip-shipped ones, offline), tapped at the same blocks as
``dn2 export --patches`` (the last block at stride 8 and at stride 16), in place of anomalib's
timm extractor (which would download weights). Images: textile nominal 1..train to fit,
nominal 501..600 held-out good, local / global 1..100 defects; resized to ``--size`` square,
ImageNet-normalised, as anomalib's pre-processor does.

    python -m dn2.tools.studies.anomalib_side [--train 200] [--size 224] [--ratio 0.01] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _need_anomalib():
    try:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    except ImportError as exc:
        raise SystemExit(
            "anomalib_side: anomalib is not installed here (it is not a dn2 dependency): "
            f"pip install anomalib into a separate venv and run this there ({exc})"
        ) from None
    return PatchcoreModel


def lite_extractor(arch: str = "efficientnet_lite0"):
    """dn2's Lite trunk as anomalib's feature extractor: images -> {layer name: map}."""
    import torch

    from dn2.export.archs import get_arch
    from dn2.export.patches import TappedTrunk
    from dn2.export.weights import load_weights

    spec = get_arch(arch)
    trunk = TappedTrunk(spec, load_weights(spec, "imagenet", offline=True).model).eval()

    class Extractor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = trunk
            self.names = [x["name"] for x in trunk.layers]

        def forward(self, x):
            return dict(zip(self.names, self.trunk(x)[1]))

    return Extractor().eval()


def _load(paths, size: int):
    import cv2
    import torch

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    out = []
    for p in paths:
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        shrink = rgb.shape[0] > size
        rgb = cv2.resize(
            rgb, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
        out.append(((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def run(a) -> dict:
    import conformal_clip_data as ccd
    import torch

    from dn2.runtime.threshold import roc_auc

    PatchcoreModel = _need_anomalib()
    torch.set_num_threads(a.threads)
    noms = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    sets = {
        "good": noms[500:600],
        "local": sorted(Path(ccd.local_dir()).glob("*.jpg"))[:100],
        "global": sorted(Path(ccd.global_dir()).glob("*.jpg"))[:100],
    }
    extractor = lite_extractor()
    model = PatchcoreModel(layers=extractor.names, backbone="resnet18", pre_trained=False)
    model.feature_extractor = extractor
    t0 = time.perf_counter()
    model.train()
    for i in range(0, a.train, 16):
        model(_load(noms[i : min(a.train, i + 16)], a.size))
    t_embed = time.perf_counter() - t0
    n_patches = int(sum(len(e) for e in model.embedding_store))
    t1 = time.perf_counter()
    model.subsample_embedding(a.ratio)
    t_coreset = time.perf_counter() - t1
    model.eval()
    scores, t2 = {}, time.perf_counter()
    for k, paths in sets.items():
        s = []
        for i in range(0, len(paths), 16):
            s.append(model(_load(paths[i : i + 16], a.size)).pred_score.reshape(-1).numpy())
        scores[k] = np.concatenate(s)
    t_score = time.perf_counter() - t2
    import anomalib

    return {
        "anomalib": anomalib.__version__,
        "train": a.train,
        "size": a.size,
        "coreset_ratio": a.ratio,
        "patches": n_patches,
        "bank_rows": int(model.memory_bank.shape[0]),
        "auroc_local": round(roc_auc(scores["good"], scores["local"]), 4),
        "auroc_global": round(roc_auc(scores["good"], scores["global"]), 4),
        "embed_s": round(t_embed, 1),
        "coreset_s": round(t_coreset, 1),
        "score_s_per_image": round(t_score / sum(len(v) for v in sets.values()), 4),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.anomalib_side",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--ratio", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = run(a)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
