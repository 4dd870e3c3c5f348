"""The manifest's building blocks: the model reference, bank references, thresholds (part of
:mod:`dn2.runtime.manifest`; each ``parse`` checks its section once, ``to_dict`` writes it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .configrules import HNSW_ENGINES
from .manifest_check import MAX_ROWS, METRIC, MISSING, Check

HNSW_PARAMS = ("M", "ef_construction", "ef", "seed", "project", "rerank")
ENGINES = HNSW_ENGINES[1:]  # a two-stage bank's graph walker as recorded (never "auto")


def _extra(sec: Mapping, typed) -> Dict[str, Any]:
    return {k: v for k, v in sec.items() if k not in typed}


def _out(typed: Dict[str, Any], extra: Mapping) -> Dict[str, Any]:
    return {**dict(extra), **typed}


@dataclass(frozen=True)
class ModelRef:
    """The model file and what the manifest knows of it (checked against its metadata)."""

    arch: str
    input: int
    dim: int
    weights: Optional[str] = None
    precision: Optional[str] = None
    outputs: Optional[Tuple[str, ...]] = None  # named graph outputs; None: schema 1, unrecorded
    file: str = ""
    sha256: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    _TYPED = ("arch", "input", "dim", "weights", "precision", "outputs", "file", "sha256")

    @classmethod
    def of_meta(cls, meta) -> ModelRef:
        """From the model's ``ModelMeta`` (the fit side)."""
        return cls(
            arch=meta.arch,
            input=meta.input_size,
            dim=meta.dim,
            weights=meta.weights,
            precision=meta.precision,
            outputs=tuple(meta.output_names),
        )

    @classmethod
    def parse(cls, c: Check, d: Mapping, files: Mapping[str, str]) -> ModelRef:
        name, digest = c.named_file(d, "model", files)
        outs = d.get("outputs") if c.v1 else d.get("outputs", ())
        if outs is not None and (
            not isinstance(outs, list) or not outs or not all(isinstance(o, str) for o in outs)
        ):
            c.fail("model.outputs", "a list of output names", outs)
        return cls(
            arch=c.text(d, "arch", "model.arch"),
            input=c.integer(d, "input", "model.input", 8, 8192),
            dim=c.integer(d, "dim", "model.dim", 1, 1 << 16),
            weights=d.get("weights") if isinstance(d.get("weights"), str) else None,
            precision=d.get("precision") if isinstance(d.get("precision"), str) else None,
            outputs=None if outs is None else tuple(outs),
            file=name,
            sha256=digest,
            extra=_extra(d, cls._TYPED),
        )

    def to_dict(self) -> Dict[str, Any]:
        typed = {k: getattr(self, k) for k in self._TYPED}
        typed["outputs"] = None if self.outputs is None else list(self.outputs)
        return _out(typed, self.extra)


@dataclass(frozen=True)
class BankRef:
    """A bank file: ``kind`` exact or hnsw, its rows and dims, HNSW parameters; ``contents``
    says what the rows are (embeddings, k-means centres, view inputs)."""

    contents: Optional[str] = None
    kind: str = ""
    file: str = ""
    sha256: str = ""
    n: int = 0
    dim: int = 0
    metric: str = METRIC
    hnsw: Optional[Mapping[str, Any]] = None  # integers, and a two-stage bank's "engine"
    extra: Mapping[str, Any] = field(default_factory=dict)

    _TYPED = ("contents", "kind", "file", "sha256", "n", "dim", "metric", "engine") + HNSW_PARAMS

    @classmethod
    def parse(cls, c: Check, d: Mapping, field_: str, files, dim: Optional[int]) -> BankRef:
        """``dim``: the model's (None: any, e.g. patch features; the file is checked)."""
        kind = c.choice(d, "kind", f"{field_}.kind", ("exact", "hnsw"))
        name, digest = c.named_file(d, field_, files)
        n = c.integer(d, "n", f"{field_}.n", 1, MAX_ROWS)
        if dim is None:
            dim = c.integer(d, "dim", f"{field_}.dim", 1, 1 << 16)
        else:
            c.integer(d, "dim", f"{field_}.dim", dim, dim, what=f"the model's dim {dim}")
        c.choice(d, "metric", f"{field_}.metric", (METRIC,))
        hnsw = None
        if kind == "hnsw":
            hnsw = {
                "M": c.integer(d, "M", f"{field_}.M", 2, 10_000),
                "ef_construction": c.integer(
                    d, "ef_construction", f"{field_}.ef_construction", 1, 1 << 20
                ),
                "ef": c.integer(d, "ef", f"{field_}.ef", 1, 1 << 20),
            }
            seed = c.integer(d, "seed", f"{field_}.seed", 0, (1 << 63) - 1, required=False)
            if seed is not None:
                hnsw["seed"] = seed
            proj = c.integer(d, "project", f"{field_}.project", 1, dim - 1, required=False)
            if proj is not None:  # two stages: the projection and full rows beside the graph
                hnsw["project"] = proj
                hnsw["rerank"] = c.integer(d, "rerank", f"{field_}.rerank", 1, 1 << 20)
                if "engine" in d:  # who walks the graph; absent (older bundles): hnswlib
                    hnsw["engine"] = c.choice(d, "engine", f"{field_}.engine", ENGINES)
                for tag in ("proj", "rows"):
                    sib = f"{name.rsplit('.', 1)[0]}.{tag}.npy"
                    if sib not in files:
                        c.fail(f"files.{sib}", f"a digest ({field_}.project is set)", MISSING)
        contents = d.get("contents")
        return cls(
            contents=contents if isinstance(contents, str) else None,
            kind=kind,
            file=name,
            sha256=digest,
            n=n,
            dim=dim,
            hnsw=hnsw,
            extra=_extra(d, cls._TYPED),
        )

    def placed(self, params: Mapping[str, Any], file: str, sha256: str) -> BankRef:
        """This reference for a bank written as ``file`` (``params``: ``Bank.params()``)."""
        hnsw = {k: int(params[k]) for k in HNSW_PARAMS if k in params} or None
        if hnsw and "engine" in params:
            hnsw["engine"] = str(params["engine"])
        return dataclasses.replace(
            self,
            kind=params["kind"],
            n=int(params["n"]),
            dim=int(params["dim"]),
            metric=params.get("metric", METRIC),
            hnsw=hnsw,
            file=file,
            sha256=sha256,
        )

    def params(self) -> Dict[str, Any]:
        """What ``dn2.runtime.bank.load_bank`` checks the file against."""
        return {
            "kind": self.kind,
            "n": self.n,
            "dim": self.dim,
            "metric": self.metric,
            **(self.hnsw or {}),
        }

    def to_dict(self) -> Dict[str, Any]:
        typed = {"contents": self.contents, "file": self.file, "sha256": self.sha256}
        typed.update(self.params())
        if self.contents is None:
            del typed["contents"]
        return _out(typed, self.extra)


@dataclass(frozen=True)
class ScoreTail:
    """How many calibration scores there were and the largest of them, sorted (enough to
    re-threshold at rates down to ``len(tail) / n``; ``dn2.runtime.threshold.rethreshold``)."""

    n: int
    tail: Tuple[float, ...]

    @classmethod
    def parse(cls, c: Check, d: Mapping, field_: str) -> Optional[ScoreTail]:
        s = c.record(d, "scores", field_)
        if s is None:
            return None
        n = c.integer(s, "n", f"{field_}.n", 0, MAX_ROWS)
        tail = c.numbers(s, "tail", f"{field_}.tail")
        if tail is None:
            c.fail(f"{field_}.tail", "a list of finite numbers", s.get("tail"))
        return cls(n=n, tail=tail)

    def to_dict(self) -> Dict[str, Any]:
        return {"n": self.n, "tail": list(self.tail)}


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold: its value, how it was found, the held-out normal scores'
    quantiles (drift checks read the median) and their largest values (re-thresholding)."""

    value: float
    method: Optional[str] = None
    fpr: Optional[float] = None
    quantiles: Mapping[str, float] = field(default_factory=dict)
    scores: Optional[ScoreTail] = None
    calibration: Optional[str] = None
    candidates: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    _TYPED = ("value", "method", "fpr", "quantiles", "scores", "calibration", "candidates")

    @classmethod
    def parse(cls, c: Check, d: Mapping, field_: str, low: Optional[float] = None) -> Threshold:
        cands = c.record(d, "candidates", f"{field_}.candidates")
        method, calib = d.get("method"), d.get("calibration")
        return cls(
            value=c.num(d, "value", f"{field_}.value", low=low),
            method=method if isinstance(method, str) else None,
            fpr=c.num(d, "fpr", f"{field_}.fpr", required=False),
            quantiles=c.table(d, "quantiles", f"{field_}.quantiles"),
            scores=ScoreTail.parse(c, d, f"{field_}.scores"),
            calibration=calib if isinstance(calib, str) else None,
            candidates=cands or {},
            extra=_extra(d, cls._TYPED),
        )

    @classmethod
    def of(cls, d: Mapping, field_: str = "threshold") -> Threshold:
        """From a section as ``dn2.runtime.threshold`` computes it (the fit side)."""
        return cls.parse(Check("(being written)"), d, field_)

    @property
    def median(self) -> Optional[float]:
        return self.quantiles.get("0.5")

    def replace(self, **changes: Any) -> Threshold:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        typed = {k: getattr(self, k) for k in self._TYPED}
        typed["quantiles"], typed["candidates"] = dict(self.quantiles), dict(self.candidates)
        typed["scores"] = None if self.scores is None else self.scores.to_dict()
        return _out({k: v for k, v in typed.items() if v is not None}, self.extra)
