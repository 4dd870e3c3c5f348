"""The Python API over a bundle: score and predict images, batches and groups.

det = Detector.load("bundle/")            # checks checksums, schema, dims, model metadata
det.score_paths(["a.jpg", "b.png"])       # [ScoreResult(path, score, threshold,
                                          #              anomalous, error)]
det.score_images([bgr_uint8, ...])        # float32 [N]
det.score_embeddings(emb)                 # float32 [N]  (L2-normalised first if fitted so)
det.score_group_paths(paths)              # GroupResult, pooled set vs the normal groups
det.predict(emb_or_images)                # bool [N]: score > threshold
det.analyze_paths(paths) / det.analyze_images(imgs)   # ScoreResult with map, peak, box
                                          # (bundles fitted with --mode patch|both/--view)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .bundle import Bundle, check_model_meta, load_bundle
from .errors import Dn2Error
from .progress import Progress
from .scoring import cov_trace, knn_score, l2normalize, pool

GROUP_STATS = ("knn", "cov_trace")


@dataclass
class ScoreResult:
    path: str
    score: Optional[float]
    threshold: float
    anomalous: Optional[bool]
    error: Optional[str] = None
    global_score: Optional[float] = None  # raw global kNN score (view bundles)
    patch_score: Optional[float] = None  # raw patch score (patch / both bundles)
    peak: Optional[List[int]] = None  # [x, y] of the map's maximum, image pixels
    box: Optional[List[int]] = None  # [x, y, w, h] over the pixel threshold, or None
    map: Optional[np.ndarray] = field(default=None, repr=False, compare=False)  # float32 [H, W]

    @property
    def norm_score(self) -> Optional[float]:
        """score / threshold: 1.0 is the decision boundary, on every bundle's scale."""
        if self.score is None or not self.threshold or self.threshold <= 0:
            return None
        return float(self.score) / float(self.threshold)

    def to_dict(self) -> dict:
        """The JSON fields (the five base fields and ``norm_score``, plus the view / patch
        fields for such bundles)."""
        d = {k: v for k, v in self.__dict__.items() if k != "map"}
        d["norm_score"] = self.norm_score
        if self.global_score is None and self.patch_score is None:
            for k in ("global_score", "patch_score", "peak", "box"):
                d.pop(k)
        return d


@dataclass
class GroupResult:
    paths: List[str]
    n_images: int
    score: Optional[float]
    threshold: Optional[float]
    anomalous: Optional[bool]
    statistic: str = "knn"
    errors: List[Tuple[str, str]] = field(default_factory=list)
    error: Optional[str] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["errors"] = [list(e) for e in self.errors]
        return d


class Detector:
    """A loaded bundle plus (optionally) its embedder, on an onnxruntime or TensorRT backend."""

    def __init__(self, bundle: Bundle, embedder=None):
        self.bundle = bundle
        m = bundle.manifest
        self.manifest = m
        self.threshold = m.threshold.value
        self.k = m.score.k
        self.l2norm = m.score.l2norm
        self.dim = m.model.dim
        g = m.group
        self.group_threshold = g.threshold.value if g else None
        self.group_cov_trace_threshold = g.cov_trace_threshold.value if g else None
        self.pooling = g.pooling if g else "mean"
        self.group_k = g.k if g else None
        self._embedder = embedder
        self.views = m.signals is not None  # fitted by fit_view_bundle: view / patch / both
        self.mode = m.score.mode
        self._vs = None

    @classmethod
    def load(
        cls,
        bundle_dir,
        providers="auto",
        threads: Optional[int] = None,
        batch_size: int = 8,
        load_model: bool = True,
        jpeg_draft: Optional[bool] = None,
        trusted_key=None,
        backend=None,
    ) -> Detector:
        """Load and validate; ``load_model=False`` skips the model (scoring embeddings only).
        ``jpeg_draft``: None decodes files the way the bundle was fitted (manifest
        ``score.jpeg_draft``); True / False override it. ``trusted_key``: a public key PEM path
        (default: $DN2_TRUSTED_KEY); when set, only a bundle signed by it loads. ``backend``: an
        open backend (``dn2.runtime.backend``, e.g. a native ``TrtEngine`` built from the
        bundle's model) instead of an onnxruntime session on ``model.onnx``;
        ``providers``/``threads`` are then unused. Its metadata must agree with the bundle's."""
        bundle = load_bundle(bundle_dir, trusted_key=trusted_key)
        emb = None
        if load_model or backend is not None:
            from .embedder import Embedder

            if jpeg_draft is None:
                jpeg_draft = bundle.manifest.score.jpeg_draft
            gray = bundle.manifest.score.color == "gray"
            if backend is None:
                emb = Embedder(
                    str(bundle.model_path),
                    providers=providers,
                    threads=threads,
                    batch_size=batch_size,
                    jpeg_draft=jpeg_draft,
                    gray=gray,
                )
            else:
                emb = Embedder(bundle.model_path, backend=backend, jpeg_draft=jpeg_draft, gray=gray)
            check_model_meta(bundle.manifest, emb.meta, str(bundle.path))
        return cls(bundle, emb)

    @property
    def embedder(self):
        if self._embedder is None:
            raise Dn2Error(
                "this Detector was loaded with load_model=False: expected an "
                "embedder for images, found none"
            )
        return self._embedder

    @property
    def view_scorer(self):
        if self._vs is None:
            from .mapscore import ViewScorer

            self._vs = ViewScorer(self.bundle, self._embedder)
        return self._vs

    @property
    def has_maps(self) -> bool:
        return self.views and self.view_scorer.has_maps

    def analyze_paths(self, paths: Sequence, maps: bool = True) -> List[ScoreResult]:
        """Score files; with the patch signal each result carries ``map`` (float32, the
        image's own height x width), ``peak`` and ``box``."""
        if not self.views:
            return self.score_paths(paths)
        return self.view_scorer.score_paths(paths, maps)

    def analyze_images(self, images: Sequence[np.ndarray], maps: bool = True) -> List[ScoreResult]:
        if not self.views:
            scores = self.score_images(images)
            return [
                ScoreResult(f"image {i}", float(s), self.threshold, bool(s > self.threshold))
                for i, s in enumerate(scores)
            ]
        return self.view_scorer.score_images(list(images), maps)

    def set_threshold(self, value: float) -> None:
        """Decide with ``value`` instead of the bundle's threshold (score --threshold)."""
        import math

        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise Dn2Error(
                f"threshold: expected a positive number, found {value!r}", param="threshold"
            )
        self.threshold = float(value)
        if self.views:
            self.view_scorer.threshold = float(value)

    # -- single images -----------------------------------------------------------------
    def _features(self, emb) -> np.ndarray:
        e = np.asarray(emb, np.float32)
        if e.ndim == 1:
            e = e[None, :]
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise Dn2Error(f"embeddings: expected [N, {self.dim}], found shape {e.shape}")
        return l2normalize(e) if self.l2norm else e

    def score_embeddings(self, emb) -> np.ndarray:
        e = self._features(emb)
        if len(e) == 0:
            return np.zeros(0, np.float32)
        return knn_score(self.bundle.bank, e, self.k)

    def score_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros(0, np.float32)
        if self.views:
            return np.asarray(
                [r.score for r in self.analyze_images(images, maps=False)], np.float32
            )
        return self.score_embeddings(self.embedder.embed_images(list(images)))

    def score_paths(self, paths: Sequence, progress: bool = False) -> List[ScoreResult]:
        paths = [str(p) for p in paths]
        if self.views:
            return self.view_scorer.score_paths(paths, maps=False)
        # decode ahead of the model, the kNN of batch i beside the model's batch i + 1
        scored, errors = {}, {}
        with Progress(len(paths), "embed", enabled=progress) as bar:
            for b in self.embedder.run_paths(paths, tail=self.score_embeddings):
                for p, msg in b.errors:
                    errors.setdefault(str(p), str(msg))
                for p, s in zip(b.items, b.output if b.items else ()):
                    scored.setdefault(p, []).append(float(s))
                bar.update(len(b.errors) + len(b.items))
        out = []
        for p in paths:  # input order; a file named twice gets its two scores in turn
            if scored.get(p):
                s = scored[p].pop(0)
                out.append(ScoreResult(p, s, self.threshold, bool(s > self.threshold)))
            else:
                out.append(
                    ScoreResult(
                        p,
                        None,
                        self.threshold,
                        None,
                        errors.get(p, "not scored (no embedding returned)"),
                    )
                )
        return out

    def predict(self, x) -> np.ndarray:
        """bool [N]: score > threshold, for embeddings [N, D] or a list of BGR images."""
        if isinstance(x, np.ndarray) and x.dtype != np.uint8:
            scores = self.score_embeddings(x)
        else:
            scores = self.score_images(list(x))
        return scores > self.threshold

    # -- groups --------------------------------------------------------------------------
    def _need_group(self, statistic: str) -> None:
        if statistic not in GROUP_STATS:
            raise Dn2Error(f"group statistic: expected one of {GROUP_STATS}, found {statistic!r}")
        if self.bundle.group_bank is None:
            raise Dn2Error(
                f"bundle {self.bundle.path}: expected a group bank for group "
                f"scoring, found none (fit it with dn2 fit --group-size M or --group-dirs)"
            )

    def score_group_embeddings(self, emb, statistic: str = "knn") -> float:
        """Pooled set [M, D] vs the normal groups (knn), or the covariance trace (paper 4.5)."""
        self._need_group(statistic)
        e = self._features(emb)
        if statistic == "cov_trace":
            return cov_trace(e)
        return float(
            knn_score(self.bundle.group_bank, pool(e, self.pooling)[None, :], self.group_k)[0]
        )

    def group_threshold_for(self, statistic: str = "knn") -> float:
        self._need_group(statistic)
        return self.group_threshold if statistic == "knn" else self.group_cov_trace_threshold

    def score_group_paths(self, paths: Sequence, statistic: str = "knn") -> GroupResult:
        self._need_group(statistic)
        paths = [str(p) for p in paths]
        th = self.group_threshold_for(statistic)
        res = self.embedder.embed_paths(paths)
        errors = [(str(p), str(m)) for p, m in res.errors]
        if len(res.paths) == 0:
            return GroupResult(
                paths, 0, None, th, None, statistic, errors, "no image of the group could be scored"
            )
        s = self.score_group_embeddings(res.embeddings, statistic)
        return GroupResult(paths, len(res.paths), s, th, bool(s > th), statistic, errors)

    def predict_group(self, emb, statistic: str = "knn") -> bool:
        return self.score_group_embeddings(emb, statistic) > self.group_threshold_for(statistic)
