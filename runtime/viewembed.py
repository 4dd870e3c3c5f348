"""Images through a view and the model: per image, its inputs' embeddings and patch features.

``ViewEmbedder(embedder, view)`` decodes files (like ``Embedder.embed_paths``: a bad file is an
error entry, not a stop), cuts each frame into the view's model inputs, batches the inputs of
several frames through the model (tiles of one frame and frames of a batch share one run), and
yields ``ViewItem``s in input order.
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .errors import Dn2Error
from .images import read_image, to_bgr8
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

    def items(self, sources: Iterable[Tuple[str, object]]) -> Iterator[ViewItem]:
        """``sources``: (name, path or BGR array) pairs -> ViewItems in input order."""
        per_run = max(1, self.embedder.batch_size)
        batch: List = []
        n_inputs = 0
        for name, src in sources:
            try:
                img = (
                    read_image(src, draft_side=self.embedder.draft_side)
                    if not isinstance(src, np.ndarray)
                    else src
                )
                x, rects, shape = self._prepare(img, name)
            except Dn2Error as exc:
                if batch:
                    yield from self._run(batch)
                    batch, n_inputs = [], 0
                yield ViewItem(name, (0, 0), [], None, None, str(exc))
                continue
            except Exception as exc:  # cv2.error, MemoryError from a hostile file: per file
                if batch:
                    yield from self._run(batch)
                    batch, n_inputs = [], 0
                yield ViewItem(
                    name,
                    (0, 0),
                    [],
                    None,
                    None,
                    f"{name}: expected a decodable image, found {type(exc).__name__}: {exc}",
                )
                continue
            batch.append((name, x, rects, shape))
            n_inputs += len(x)
            if n_inputs >= per_run:
                yield from self._run(batch)
                batch, n_inputs = [], 0
        if batch:
            yield from self._run(batch)

    def paths(self, paths: Sequence) -> Iterator[ViewItem]:
        return self.items((str(p), str(p)) for p in paths)

    def images(self, imgs: Sequence[np.ndarray]) -> Iterator[ViewItem]:
        return self.items((f"image {i}", im) for i, im in enumerate(imgs))
