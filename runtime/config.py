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

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .dupes import NEAR_RATIO
from .errors import ConfigError
from .modelmeta import ModelSpec  # noqa: F401  (one of the config objects; re-exported)

POOLINGS = ("mean", "max")
MODES = ("global", "patch", "both")  # which signals decide (patch needs a model with patches)
# mode both: how the two scores join (dn2.runtime.combine)
COMBINES = ("fisher", "zmax", "zsum", "max", "sum")
INDEXES = ("auto", "exact", "hnsw")
THRESHOLD_METHODS = ("fpr", "val-fpr", "youden", "f1")
KMEANS_BACKENDS = ("auto", "faiss", "sklearn")
GROUP_STATS = ("knn", "cov_trace")
HNSW_KEYS = ("M", "ef_construction", "ef")

Rule = Callable[[str, Any], Any]  # (name, value) -> the value to store, or raise ConfigError


def _bad(name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{name}: expected {expected}, found {value!r}", param=name)


def _is_int(v: Any) -> bool:
    """An integer (numpy's too), never a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def integer(lo: Optional[int] = None, hi: Optional[int] = None, optional: bool = False) -> Rule:
    rng = (
        f">= {lo}"
        if lo is not None and hi is None
        else f"in [{lo}, {hi}]"
        if lo is not None and hi is not None
        else ""
    )
    tail = " (or None)" if optional else ""

    def rule(name: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if not _is_int(v):
            raise _bad(name, f"an integer {rng}".rstrip() + tail, v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _bad(name, rng, v)
        return int(v)

    return rule


def number(
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
    noun: str = "a number",
) -> Rule:
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    what = (
        noun
        + (
            f" in {lb}{lo:g}, {hi:g}{rb}"
            if lo is not None and hi is not None
            else f" {'>' if lo_open else '>='} {lo:g}"
            if lo is not None
            else ""
        )
        + (" (or None)" if optional else "")
    )

    def rule(name: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if (
            isinstance(v, (bool, np.bool_))
            or not isinstance(v, numbers.Real)
            or not math.isfinite(v)
        ):
            raise _bad(name, what, v)
        x = float(v)
        if lo is not None and (x < lo or (lo_open and x == lo)):
            raise _bad(name, what, v)
        if hi is not None and (x > hi or (hi_open and x == hi)):
            raise _bad(name, what, v)
        return x

    return rule


def choice(values: Sequence[Any], optional: bool = False) -> Rule:
    what = "one of " + ", ".join(map(repr, values)) + (" (or None)" if optional else "")

    def rule(name: str, v: Any) -> Any:
        if v is None and optional:
            return None
        # bool is an int: True must not pass for 1 (nor 1 for True)
        if not any(v == c and type(v) is type(c) for c in values):
            raise _bad(name, what, v)
        return v

    return rule


def boolean(name: str, v: Any) -> Any:
    if not isinstance(v, bool):
        raise _bad(name, "true or false", v)
    return v


def text(optional: bool = False) -> Rule:
    def rule(name: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            raise _bad(name, "a non-empty string" + (" or None" if optional else ""), v)
        return v

    return rule


def providers_rule(name: str, v: Any) -> Any:
    """ "auto", a comma-separated string, or a list of provider names (kept as a tuple)."""
    if isinstance(v, str) and v.strip():
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(p, str) and p for p in v):
        return tuple(v)
    raise _bad(name, "'auto', a provider name, a comma-separated string or a list of names", v)


def names_rule(name: str, v: Any) -> Any:
    """None, one name or a list of non-empty names (kept as a tuple)."""
    if v is None:
        return None
    if isinstance(v, str):
        v = (v,)
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) and x.strip() for x in v):
        return tuple(v)
    raise _bad(name, "None, a name or a list of non-empty names", v)


def hnsw_rule(name: str, v: Any) -> Any:
    if v is None:
        return None
    if (
        not isinstance(v, Mapping)
        or any(k not in HNSW_KEYS for k in v)
        or not all(_is_int(x) and x >= 1 for x in v.values())
    ):
        raise _bad(name, f"None or a mapping of {', '.join(HNSW_KEYS)} to integers >= 1", v)
    return dict(v)


def color_rule(name: str, v: Any) -> Any:
    """ "auto", "gray" or "color"; or the colour decision already taken elsewhere (a mapping
    with "mode", as ``dn2.runtime.fit.color_mode`` returns it, e.g. from a Ray fit)."""
    if isinstance(v, Mapping) and v.get("mode") in ("auto", "gray", "color"):
        return dict(v)
    return choice(("auto", "gray", "color"))(name, v)


def opt(default: Any, rule: Rule, doc: str = "") -> Any:
    """A config field: its default, its rule and a one-line description."""
    if isinstance(default, (dict, list)):
        return field(
            default_factory=lambda: type(default)(default), metadata={"rule": rule, "doc": doc}
        )
    return field(default=default, metadata={"rule": rule, "doc": doc})


class _Config:
    """Validation on construction, ``from_mapping``, ``replace``, ``to_dict``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["rule"](f.name, getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        """Rules between fields (override)."""

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def doc(cls, name: str) -> str:
        return next(f.metadata["doc"] for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "") -> _Config:
        """Build from a mapping of field names (e.g. a TOML/YAML table); an unknown key is a
        ConfigError naming it and listing the known ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{where or cls.__name__}: expected a mapping of option names to "
                f"values, found {type(data).__name__}"
            )
        names = cls.field_names()
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"{(where + ': ') if where else ''}unknown option {key!r} "
                    f"for {cls.__name__}; expected one of {', '.join(names)}",
                    param=str(key),
                )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> _Config:
        names = self.field_names()
        for key in changes:
            if key not in names:
                raise ConfigError(
                    f"unknown option {key!r} for {type(self).__name__}; expected "
                    f"one of {', '.join(names)}",
                    param=key,
                )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
            )
        return out


@dataclass(frozen=True)
class ScoreConfig(_Config):
    """How a bundle scores an embedding (paper eq. 2); recorded in the bundle."""

    k: int = opt(2, integer(1), "nearest neighbours per score (paper: 2)")
    l2norm: bool = opt(True, boolean, "L2-normalise embeddings before the bank and the score")
    jpeg_draft: bool = opt(False, boolean, "decode large JPEGs at 1/2-1/8 scale in libjpeg")
    reduction: str = opt("mean", choice(("mean",)), "how the k distances combine")
    color: str = opt("color", choice(("gray", "color")), "gray: score every input as gray")
    mode: str = opt("global", choice(MODES), "which signals decide")
    combine: str = opt("max", choice(COMBINES), "mode both: how the two scores join")


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
        None, hnsw_rule, "HNSW parameters (M, ef_construction, ef) over the defaults"
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
        "none",
        choice(("none", "camera")),
        "camera: add camera-path variants of every normal image to the bank",
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
        if self.augment != "none" and self.augment_into != "both" and self.kmeans is not None:
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
