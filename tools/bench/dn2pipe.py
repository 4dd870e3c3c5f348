"""dn2's own pipeline: the lean runtime exactly as dn2-score / dn2-watch run it.

``dn2.runtime.images.read_image`` decodes (OpenCV), ``prepare`` resizes the shorter side and
centre-crops to the model's uint8 BGR input, the ``Embedder`` runs the ONNX graph in onnxruntime
(cast and normalisation are inside the graph), the runtime's exact kNN scores against the bank,
and the decision is score > threshold. ``jpeg_draft=True`` is the same pipeline with the
opt-in reduced-scale JPEG decode (``dn2-fit --jpeg-draft``), sharing the other one's session.
``cpu_split``: the Embedder's CPU batch split (None: the runtime's default).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class Dn2Pipeline:
    def __init__(
        self,
        model_path: str,
        kind: str,
        bank: np.ndarray,
        k: int,
        threshold: float,
        threads: int,
        batch_size: int,
        name: str = "",
        jpeg_draft: bool = False,
        share: Dn2Pipeline = None,
        cpu_split=None,
    ):
        import cv2

        from dn2.runtime import images
        from dn2.runtime.embedder import Embedder

        cv2.setNumThreads(threads)
        self.name = name or f"dn2-{kind}" + ("-jpeg-draft" if jpeg_draft else "")
        self.kind = kind
        self._images = images
        if share is not None:
            self.embedder, self.knn_fn = share.embedder, share.knn_fn
        else:
            self.embedder = Embedder(
                str(model_path),
                providers="auto",
                threads=threads,
                batch_size=batch_size,
                cpu_split=cpu_split,
            )
            self.knn_fn = make_exact_knn(bank, k)
        self.rule = self.embedder.meta.resize
        self.draft_side = images.draft_side_for(self.rule) if jpeg_draft else None
        self.threshold = float(threshold)

    def decode(self, paths: Sequence[str]):
        return [self._images.read_image(p, draft_side=self.draft_side) for p in paths]

    def load_one(self, path: str):
        """One file decoded and prepared (the runtime pipeline's per-file stage)."""
        im = self._images
        return im.prepare(im.read_image(path, draft_side=self.draft_side), self.rule)

    def preprocess(self, images):
        return np.stack([self._images.prepare(im, self.rule) for im in images])

    def model(self, batch):
        return self.embedder.embed_batch(batch)

    def knn(self, embeddings):
        return self.knn_fn(embeddings)

    def decide(self, scores):
        return (np.asarray(scores) > self.threshold).tolist()


def make_exact_knn(bank: np.ndarray, k: int):
    """The runtime's exact bank and kNN score (paper eq. 2) as one callable: queries -> scores."""
    from dn2.runtime import scoring
    from dn2.runtime.bank import build_bank

    exact = build_bank(np.ascontiguousarray(bank, dtype=np.float32), index="exact")
    return lambda q: scoring.knn_score(exact, q, k=k)
