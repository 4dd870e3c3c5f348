"""The manifest's ``fit`` section: the FitConfig the bundle was fitted with, the stored normal
embeddings (``fit --append`` refits from them) and the fit's record (counts, colour decision,
duplicates report, augmentation settings, ...). Part of :mod:`dn2.runtime.manifest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .config import FitConfig
from .errors import BundleError, ConfigError
from .manifest_check import MAX_ROWS, Check

_COUNTS = ("images", "kept", "failed", "dropped")


@dataclass(frozen=True)
class StoredEmbeddings:
    """``fit.embeddings``: the normal rows the bank was built from (before L2 normalisation,
    cleaning and k-means): ``file`` float32 [n, dim], ``rows`` one record per row, and the
    ``appended`` history (``dn2.runtime.fit_append``)."""

    file: str
    rows: str
    n: int
    dim: int
    dtype: str = "float32"
    normalised: bool = False
    appended: List[Dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, c: Check, d: Mapping, files: Mapping[str, str]) -> StoredEmbeddings:
        f = "fit.embeddings"
        for key in ("file", "rows"):
            if d.get(key) not in files:
                c.fail(f"{f}.{key}", f"one of {sorted(files)}", d.get(key))
        app = d.get("appended") or []
        if not isinstance(app, list) or not all(isinstance(a, dict) for a in app):
            c.fail(f"{f}.appended", "a list of objects", app)
        return cls(
            file=d["file"],
            rows=d["rows"],
            n=c.integer(d, "n", f"{f}.n", 1, MAX_ROWS),
            dim=c.integer(d, "dim", f"{f}.dim", 1, 1 << 16),
            dtype=c.choice(d, "dtype", f"{f}.dtype", ("float32",)),
            normalised=c.choice(d, "normalised", f"{f}.normalised", (True, False)),
            appended=list(app),
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "file": self.file,
            "rows": self.rows,
            "n": self.n,
            "dim": self.dim,
            "dtype": self.dtype,
            "normalised": self.normalised,
            "appended": list(self.appended),
        }


_RECORDS = ("color", "duplicates", "augment", "kmeans", "l2norm_selection")


@dataclass(frozen=True)
class FitRecord:
    """``config``: the FitConfig of ``fit_bundle`` (None for view bundles and schema-1
    bundles written before it was recorded); ``source``: images, streams, embeddings, ray...;
    ``color`` {option, detected, mode}; ``duplicates`` the copies report; ``augment`` the
    camera-path settings (None: no augmentation); the rest of the record in ``extra``."""

    config: Optional[FitConfig] = None
    images: Optional[int] = None
    kept: Optional[int] = None
    failed: Optional[int] = None
    dropped: Optional[int] = None
    source: Optional[str] = None
    color: Optional[Mapping[str, Any]] = None
    duplicates: Optional[Mapping[str, Any]] = None
    augment: Optional[Mapping[str, Any]] = None
    kmeans: Optional[Mapping[str, Any]] = None
    l2norm_selection: Optional[Mapping[str, Any]] = None
    embeddings: Optional[StoredEmbeddings] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, c: Check, d: Mapping, files: Mapping[str, str]) -> FitRecord:
        counts = {k: c.integer(d, k, f"fit.{k}", 0, MAX_ROWS, required=False) for k in _COUNTS}
        records = {k: c.record(d, k, f"fit.{k}") for k in _RECORDS}
        src = d.get("source")
        if src is not None and not isinstance(src, str):
            c.fail("fit.source", "a string", src)
        cfg = d.get("config")
        if cfg is not None:
            if not isinstance(cfg, dict):
                c.fail("fit.config", "an object of FitConfig fields", cfg)
            if c.v1:  # fields a later FitConfig dropped do not make an old bundle unreadable
                cfg = {k: v for k, v in cfg.items() if k in FitConfig.field_names()}
            try:
                cfg = FitConfig.from_mapping(cfg, where="fit.config")
            except ConfigError as exc:
                raise BundleError(f"bundle {c.where}: fit.config: {exc}") from None
        typed = set(_COUNTS) | set(_RECORDS) | {"source", "config", "embeddings"}
        emb = c.record(d, "embeddings", "fit.embeddings")
        return cls(
            config=cfg,
            embeddings=StoredEmbeddings.parse(c, emb, files) if emb else None,
            source=src,
            extra={k: v for k, v in d.items() if k not in typed},
            **counts,
            **records,
        )

    def to_dict(self) -> Dict[str, Any]:
        out = dict(self.extra)
        for k in _COUNTS + _RECORDS + ("source",):
            v = getattr(self, k)
            if v is not None or k in _RECORDS:
                out[k] = dict(v) if isinstance(v, Mapping) else v
        if self.config is not None:
            out["config"] = self.config.to_dict()
        if self.embeddings is not None:
            out["embeddings"] = self.embeddings.to_dict()
        return out
