"""The reference: DN2 the way a user runs it today in PyTorch.

PIL opens the file; torchvision's Resize(S/0.875) + CenterCrop(S) + ToTensor + Normalize prepare
it; the eager torch trunk embeds it under ``torch.inference_mode()``; exact kNN in torch
(k smallest squared L2 distances to the whole bank, mean, paper eq. 2); decision = score >
threshold.

The kNN is written the way the DN2 authors' faiss ``IndexFlatL2`` computes it (||q||^2 +
||b||^2 - 2 q.b with one matmul, bank norms computed once), not with ``torch.cdist``: cdist
rebuilds a padded copy of the whole bank on every call and is ~10x slower for a 5000 x 2048
bank, which would flatter dn2 for the wrong reason.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dn2.runtime.modelmeta import CROP_RATIO


class TorchEagerPipeline:
    kind = "torch"

    def __init__(
        self,
        trunk,
        input_size: int,
        mean255,
        std255,
        bank: np.ndarray,
        k: int,
        threshold: float,
        threads: int,
        name: str = "torch-eager",
    ):
        import torch
        from torchvision import transforms as T

        self.name = name
        self._torch = torch
        torch.set_num_threads(threads)
        self.trunk = trunk.eval()
        self.transform = T.Compose(
            [
                T.Resize(int(round(input_size / CROP_RATIO))),
                T.CenterCrop(input_size),
                T.ToTensor(),
                T.Normalize([m / 255.0 for m in mean255], [s / 255.0 for s in std255]),
            ]
        )
        self.bank = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        self.bank_sq = (self.bank * self.bank).sum(dim=1)
        self.k = int(k)
        self.threshold = float(threshold)

    def decode(self, paths: Sequence[str]):
        from PIL import Image

        out = []
        for p in paths:
            with Image.open(p) as im:
                out.append(im.convert("RGB"))  # convert() forces the full decode
        return out

    def preprocess(self, images):
        return self._torch.stack([self.transform(im) for im in images])

    def model(self, batch):
        with self._torch.inference_mode():
            return self.trunk(batch)

    def knn(self, embeddings):
        torch = self._torch
        with torch.inference_mode():
            q_sq = (embeddings * embeddings).sum(dim=1, keepdim=True)
            d = torch.addmm(q_sq + self.bank_sq, embeddings, self.bank.T, alpha=-2.0)
            nearest = torch.topk(d.clamp_min_(0.0), self.k, dim=1, largest=False).values
            return nearest.mean(dim=1)

    def decide(self, scores):
        return (scores > self.threshold).tolist()


def embedding_trunk(full_model):
    """The classifier network with its head removed: outputs the pooled feature [N, D]."""
    import torch

    if hasattr(full_model, "fc"):  # torchvision ResNets
        full_model.fc = torch.nn.Identity()
    elif hasattr(full_model, "_fc"):  # dn2.export.efficientnet_lite
        full_model._fc = torch.nn.Identity()
    else:
        raise TypeError(f"do not know how to strip the head of {type(full_model).__name__}")
    return full_model.eval()
