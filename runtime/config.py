"""What a user chooses, as frozen dataclasses: each field's default and validation in one place.

    cfg = FitConfig(k=2, fpr=0.01)                      # validated on construction
    cfg = FitConfig.from_mapping({"k": 3, "index": "hnsw"})   # e.g. a --config file's table
    cfg = cfg.replace(fpr=0.05)                         # validated again
    cfg.to_dict()                                       # JSON-able; from_mapping reads it back

A bad value raises ``ConfigError`` (a ``Dn2Error``) whose message names the field as the
parameter (``fpr: expected a number in (0, 1), found 1.5``) and whose ``param`` is that name,
so a command line can map it to its flag. Types are strict: ``True`` is not a number, ``2.0``
is not an integer, a string is not a list; an int is accepted where a float is asked for.

* ``FitConfig``: how ``fit_bundle`` builds a bundle (``dn2 fit``).
* ``ScoreConfig``: how a bundle scores (k, L2 normalisation, JPEG decode); the bundle records it.
* ``WatchConfig``: the camera loop's choices (``dn2 watch``).
* ``ModelSpec``: what the model is, read from its ONNX metadata (``dn2.runtime.modelmeta``).

A new option is one field here (default + rule), its flag in the CLI, and the code that uses
``cfg.<field>``; nothing in between passes it along.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from .configrules import (
    _Config,
    boolean,
    choice,
    color_rule,
    hnsw_rule,
    integer,
    names_rule,
    number,
    opt,
    providers_rule,
    text,
)
from .dupes import NEAR_RATIO
from .errors import ConfigError
from .modelmeta import ModelSpec  # noqa: F401  (one of the config objects; re-exported)

POOLINGS = ("mean", "max")
MODES = ("global", "patch", "both")  # which signals decide (patch needs a model with patches)
# mode both: how the two scores join (dn2.runtime.combine)
COMBINES = ("cfisher", "fisher", "zmax", "zsum", "max", "sum")
INDEXES = ("auto", "exact", "hnsw")
THRESHOLD_METHODS = ("fpr", "val-fpr", "youden", "f1")
KMEANS_BACKENDS = ("auto", "faiss", "sklearn")
GROUP_STATS = ("knn", "cov_trace")


@dataclass(frozen=True)
class ScoreConfig(_Config):
    """How a bundle scores an embedding (paper eq. 2); recorded in the bundle."""

    k: int = opt(2, integer(1), "nearest neighbours per score (paper: 2)")
    l2norm: bool = opt(True, boolean, "L2-normalise embeddings before the bank and the score")
    jpeg_draft: bool = opt(False, boolean, "decode large JPEGs at 1/2-1/8 scale in libjpeg")
    reduction: str = opt("mean", choice(("mean",)), "how the k distances combine")
    color: str = opt("color", choice(("gray", "color")), "gray: score every input as gray")
    mode: str = opt("global", choice(MODES), "which signals decide")
    combine: str = opt(
        "max",
        choice(COMBINES),
        "mode both: how the two scores join (the fit records its rule, by default cfisher: "
        "dn2.runtime.combine.DEFAULT_RULE; max is what bundles that record none used)",
    )


@dataclass(frozen=True)
class FitConfig(_Config):
    """How ``fit_bundle`` builds a bundle from normal images."""

    k: int = opt(2, integer(1), "nearest neighbours per score (paper: 2)")
    clean: float = opt(
        0.0,
        number(0.0, 1.0, hi_open=True, noun="a fraction"),
        "fraction of training images with the largest leave-one-out distance "
        "to drop (paper 3.2 uses 0.5)",
    )
    kmeans: Optional[int] = opt(
        None,
        integer(1, optional=True),
        "compress the bank to this many k-means centres (paper 5.1)",
    )
    kmeans_folds: int = opt(5, integer(2), "folds of the held-out calibration of a k-means bank")
    kmeans_backend: str = opt("auto", choice(KMEANS_BACKENDS), "k-means implementation")
    index: str = opt("auto", choice(INDEXES), "bank backend (auto: exact below the size cut)")
    hnsw: Optional[Dict[str, int]] = opt(
        None, hnsw_rule, "HNSW settings over the defaults: M, ef_construction, ef, project, rerank"
    )
    fpr: float = opt(
        0.01,
        number(0.0, 1.0, lo_open=True, hi_open=True, noun="a rate"),
        "target false-positive rate on normal images",
    )
    threshold_method: str = opt(
        "fpr",
        choice(THRESHOLD_METHODS),
        "fpr: leave-one-out quantile of the training images; val-fpr / "
        "youden / f1 need validation images",
    )
    group_size: Optional[int] = opt(
        None,
        integer(1, optional=True),
        "also fit group scoring from sampled sets of this many images",
    )
    n_groups: int = opt(1000, integer(1), "number of sampled normal groups")
    pooling: str = opt("mean", choice(POOLINGS), "group pooling (paper 3.3: mean)")
    l2norm: Union[bool, str] = opt(
        True,
        choice((True, False, "auto")),
        "L2-normalise embeddings; 'auto' picks by validation ROC-AUC",
    )
    jpeg_draft: bool = opt(False, boolean, "decode large JPEGs at 1/2-1/8 scale in libjpeg")
    color: Any = opt("auto", color_rule, "auto (detect a monochrome normal set), gray or color")
    every: int = opt(1, integer(1), "video / stream inputs: embed every N-th frame")
    max_frames: Optional[int] = opt(
        None, integer(1, optional=True), "video / stream inputs: at most this many frames each"
    )
    seconds: Optional[float] = opt(
        None,
        number(0.0, lo_open=True, optional=True),
        "video / stream inputs: at most this many seconds each",
    )
    connect_timeout: float = opt(
        30.0, number(0.0, lo_open=True), "live sources: seconds to keep trying to connect"
    )
    augment: str = opt(
        "auto",
        choice(("auto", "none", "camera")),
        "camera: add camera-path variants of every normal image to the bank; auto "
        "(default): camera for still images into an exact bank, none otherwise",
    )
    augment_copies: int = opt(1, integer(1), "variants per normal image with augment camera")
    augment_into: str = opt(
        "bank",
        choice(("both", "bank", "calibration")),
        "where the camera variants go: the bank (default), the bank and the calibration, "
        "or the calibration only",
    )
    near_copy_ratio: float = opt(
        NEAR_RATIO,
        number(0.0, 1.0),
        "near copies (calibrated as one group): embeddings closer than this x the set's "
        "median pair distance; 0: exact copies only",
    )
    seed: int = opt(0, integer(0), "seed of k-means, groups and folds")
    batch: int = opt(8, integer(1), "images per inference batch")
    threads: Optional[int] = opt(
        None, integer(1, optional=True), "onnxruntime intra-op threads (None: all cores)"
    )
    providers: Union[str, Tuple[str, ...]] = opt(
        "auto", providers_rule, "onnxruntime providers (auto, cpu, cuda, ...)"
    )

    def _check(self) -> None:
        if self.kmeans is not None and self.kmeans < self.k:
            raise ConfigError(
                f"kmeans {self.kmeans}: expected at least k={self.k} centres", param="kmeans"
            )
        if self.augment == "camera" and self.augment_into != "both" and self.kmeans is not None:
            raise ConfigError(
                f"augment_into {self.augment_into!r}: expected 'both' with a k-means bank "
                "(its calibration holds out folds of the bank's own images), found kmeans",
                param="augment_into",
            )

    def score_config(self, l2norm: Optional[bool] = None) -> ScoreConfig:
        """What the fitted bundle will score with (``l2norm``: the resolved 'auto')."""
        return ScoreConfig(
            k=self.k, l2norm=self.l2norm if l2norm is None else l2norm, jpeg_draft=self.jpeg_draft
        )


@dataclass(frozen=True)
class WatchConfig(_Config):
    """The camera loop's choices (``dn2.runtime.watch.loop.watch``)."""

    batch: int = opt(8, integer(1), "most frames embedded in one call")
    stride: int = opt(1, integer(1), "score every N-th frame")
    group: Optional[int] = opt(
        None, integer(2, optional=True), "group mode: score the pooled last M frames (M >= 2)"
    )
    hop: Optional[int] = opt(None, integer(1, optional=True), "group mode: frames between groups")
    threshold: Optional[float] = opt(None, number(optional=True), "override the threshold")
    min_consecutive: int = opt(
        3, integer(1), "scores above (below) the threshold that open (close) an alert"
    )
    cooldown: float = opt(0.0, number(0.0), "quiet seconds after an alert")
    events: Optional[str] = opt(None, text(optional=True), "alert events file (JSON lines)")
    snapshots: Optional[str] = opt(None, text(optional=True), "folder for peak frames")
    output_video: Optional[str] = opt(None, text(optional=True), "annotated video file")
    headless: bool = opt(False, boolean, "no window (one falls back to headless without a display)")
    stats_every: float = opt(10.0, number(0.0), "seconds between stats lines on the log (0: never)")
    learn: Optional[str] = opt(
        None, text(optional=True), "fit from the first frames: 30, 30s, 300f"
    )
    learn_bundle: Optional[str] = opt(None, text(optional=True), "keep the learned bundle here")
    providers: Union[str, Tuple[str, ...]] = opt("auto", providers_rule, "onnxruntime providers")
    threads: Optional[int] = opt(None, integer(1, optional=True), "onnxruntime threads")
    max_frames: Optional[int] = opt(None, integer(1, optional=True), "stop after this many")
    queue_size: Optional[int] = opt(None, integer(1, optional=True), "frames buffered")
    realtime: bool = opt(False, boolean, "replay a video file at its frame rate")
    reconnect_attempts: Optional[int] = opt(
        None, integer(0, optional=True), "failed reconnects in a row before giving up"
    )
    reconnect_max_delay: float = opt(
        10.0, number(0.05), "longest wait between reconnects (seconds)"
    )
    folder_fps: float = opt(10.0, number(0.0, lo_open=True), "clock of a folder source")
    connect_timeout: float = opt(
        30.0, number(0.0, lo_open=True), "live sources not up at start: seconds of retrying"
    )
    scores: Optional[str] = opt(
        None, text(optional=True), "every score to this file (CSV for .csv, else JSON lines)"
    )
    force: bool = opt(False, boolean, "replace existing output files / the learn bundle")
    trusted_key: Optional[str] = opt(
        None, text(optional=True), "watch only a bundle signed by this public key (PEM)"
    )
    camera_id: Optional[Tuple[str, ...]] = opt(
        None, names_rule, "camera names, one per source (default: from each source)"
    )

    def _check(self) -> None:
        if self.hop is not None and self.group is None:
            raise ConfigError(
                "hop: expected only together with group M (it is the step "
                "between scored groups), found hop without group",
                params=("hop", "group"),
            )
