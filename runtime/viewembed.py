"""Images through a view and the model: per image, its inputs' embeddings and patch features.

``ViewEmbedder(embedder, view)`` decodes files (like ``Embedder.embed_paths``: a bad file is an
error entry, not a stop), cuts each frame into the view's model inputs, batches the inputs of
several frames through the model (tiles of one frame and frames of a batch share one run), and
yields ``ViewItem``s in input order.
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .errors import Dn2Error, ImageError
from .images import read_image, to_bgr8
from .pipeline import overlapped
from .views import Rect, View, view_inputs, warn_coverage


class ViewItem(NamedTuple):
    name: str
    shape: Tuple[int, int]  # frame height, width
    rects: List[Rect]  # source rectangle of each model input
    embeddings: Optional[np.ndarray]  # float32 [T, D]
    patches: Optional[np.ndarray]  # float32 [T, C, h, w] (None without patch output)
    error: Optional[str]


class ViewEmbedder:
    def __init__(self, embedder, view: View, patches: bool = True):
        self.embedder, self.view = embedder, view
        self.patches = bool(patches)
        if self.patches and embedder.patch_spec is None:
            raise Dn2Error(
                f"{embedder.model_path}: patch scoring needs a model exported with "
                f"--patches (dn2-export --patches), found one without that output"
            )
        self._warned = set()

    def _prepare(self, img: np.ndarray, name: str):
        img = to_bgr8(img, name)
        h, w = img.shape[:2]
        if (h, w) not in self._warned:
            self._warned.add((h, w))
            warn_coverage(self.view, h, w, self.embedder.rule)
        x, rects = view_inputs(img, self.view, self.embedder.rule)
        return x, rects, (h, w)

    def _run(
        self, batch: List[Tuple[str, np.ndarray, List[Rect], Tuple[int, int]]]
    ) -> List[ViewItem]:
        """One model call over the inputs of several frames."""
        x = np.concatenate([b[1] for b in batch])
        if self.patches:
            emb, pat = self.embedder.embed_patches_batch(x)
        else:
            emb, pat = self.embedder.embed_batch(x), None
        out, i = [], 0
        for name, xi, rects, shape in batch:
            t = len(xi)
            out.append(
                ViewItem(
                    name,
                    shape,
                    rects,
                    emb[i : i + t],
                    None if pat is None else pat[i : i + t],
                    None,
                )
            )
            i += t
        return out

    def _load(self, source: Tuple[str, object]):
        """(name, model inputs, rects, shape) of one (name, path or array); raises Dn2Error."""
        name, src = source
        try:
            img = (
                read_image(src, draft_side=self.embedder.draft_side)
                if not isinstance(src, np.ndarray)
                else src
            )
            return (name, *self._prepare(img, name))
        except Dn2Error:
            raise
        except Exception as exc:  # cv2.error, MemoryError from a hostile file: per file
            raise ImageError(
                f"{name}: expected a decodable image, found {type(exc).__name__}: {exc}"
            ) from None

    def items(
        self, sources: Iterable[Tuple[str, object]], workers: Optional[int] = None
    ) -> Iterator[ViewItem]:
        """``sources``: (name, path or BGR array) pairs -> ViewItems in input order. Decoding
        runs in the embedder's decode pool ahead of the model, the model on its own thread
        (:func:`dn2.runtime.pipeline.overlapped`), so the caller's scoring of one batch
        overlaps the model's next; a batch holds about ``batch_size`` model inputs.
        ``workers=0``: all on the caller's thread (frames already decoded, e.g. the watch's
        batches: no threads started per call)."""
        for b in overlapped(
            sources,
            self._load,
            self._run,
            batch=max(1, self.embedder.batch_size),
            workers=self.embedder.decode_workers if workers is None else workers,
            size=lambda loaded: len(loaded[1]),
            collate=list,
        ):
            good, bad = iter(b.output or ()), iter(b.errors)
            for ok in b.order:
                if ok:
                    yield next(good)
                else:
                    (name, _), why = next(bad)
                    yield ViewItem(name, (0, 0), [], None, None, why)

    def paths(self, paths: Sequence) -> Iterator[ViewItem]:
        return self.items((str(p), str(p)) for p in paths)

    def images(self, imgs: Sequence[np.ndarray]) -> Iterator[ViewItem]:
        return self.items(((f"image {i}", im) for i, im in enumerate(imgs)), workers=0)
