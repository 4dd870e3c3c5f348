"""Scoring with a bundle fitted by ``fit_view_bundle``: views, both signals, anomaly maps.

``ViewScorer(bundle, embedder).score(items)`` turns ``ViewItem``s into ``ScoreResult``s with
the decision score of the bundle's mode, each signal's raw score, and (with the patch signal)
the anomaly map of the frame, its peak and the box over the pixel threshold.
"""

from __future__ import annotations

from typing import Iterable, List, Optional

import numpy as np

from .combine import rule_of
from .patchfit import combine
from .patchscore import PatchScorer, frame_map, peak_and_box, reduce_cells
from .patchweights import channel_weights, layer_channels
from .scoring import knn_score, l2normalize
from .viewembed import ViewEmbedder, ViewItem
from .views import View


class ViewScorer:
    def __init__(self, bundle, embedder):
        m = bundle.manifest
        self.bundle, self.embedder = bundle, embedder
        self.mode = m.score.mode
        self.view = m.view or View()
        g = m.signals.glob if m.signals is not None else None
        self.k = g.k if g else m.score.k
        self.l2norm = g.l2norm if g else m.score.l2norm
        self.global_threshold = g.threshold.value if g else None
        p = m.patch
        self.patch = None
        if p is not None:
            prune = int(p.extra.get("prune", 0))  # bundles fitted before pruning: exact
            step = int(p.extra.get("cell_step", 1))  # before the sub-grid kNN: every cell
            bw = p.extra.get("block_weights")  # bundles fitted before block weights: none
            w = None
            if bw is not None:
                ch = layer_channels(p.extra.get("layers"), p.extra.get("channels"))
                w = channel_weights(bw, ch)
            self.patch = PatchScorer(
                bundle.patch_bank, p.k, p.reduction, p.topk, p.sigma, prune, weights=w, step=step
            )
            self.patch_threshold = p.threshold.value
            self.pixel_threshold = p.pixel_threshold.value
        self.threshold = m.threshold.value
        self.rule = None
        if g is not None and p is not None:
            stored = m.signals.combine
            self.rule = rule_of(stored, m.score.combine, g.threshold.value, p.threshold.value)
        self.viewer = (
            ViewEmbedder(embedder, self.view, patches=self.patch is not None)
            if embedder is not None
            else None
        )

    @property
    def has_maps(self) -> bool:
        return self.patch is not None

    def signals(self, item: ViewItem):
        """(raw global score, patch score or None, cell grids [T, h, w] or None) of an item."""
        e = l2normalize(item.embeddings) if self.l2norm else item.embeddings
        g = float(knn_score(self.bundle.bank, e, self.k).max())
        if self.patch is None:
            return g, None, None
        cells = self.patch.cells(item.patches)
        return g, float(reduce_cells(cells[None], self.patch.reduction, self.patch.topk)[0]), cells

    def _one(self, item: ViewItem, maps: bool):
        from .detector import ScoreResult

        if item.error is not None:
            return ScoreResult(item.name, None, self.threshold, None, item.error)
        g, p, cells = self.signals(item)
        peak = box = fmap = None
        if cells is not None:
            h, w = item.shape
            fmap = frame_map(
                list(cells), item.rects, h, w, self.embedder.input_size, self.patch.sigma
            )
            peak, box = peak_and_box(fmap, self.pixel_threshold)
        s = float(np.ravel(combine(g, p, self.mode, self.rule))[0])
        return ScoreResult(
            item.name,
            s,
            self.threshold,
            bool(s > self.threshold),
            None,
            global_score=g,
            patch_score=p,
            peak=peak,
            box=box,
            map=fmap if maps else None,
        )

    def score(self, items: Iterable[ViewItem], maps: bool = False) -> List:
        return [self._one(it, maps) for it in items]

    def score_paths(self, paths, maps: bool = False) -> List:
        return self.score(self.viewer.paths([str(p) for p in paths]), maps)

    def score_images(self, imgs, maps: bool = False, names: Optional[List[str]] = None) -> List:
        names = names or [f"image {i}" for i in range(len(imgs))]
        return self.score(self.viewer.items(zip(names, imgs)), maps)
