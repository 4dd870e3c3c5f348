"""The manifest's group and view-bundle sections: group calibration (paper 3.3, 4.5) and the
global / patch signals (part of :mod:`dn2.runtime.manifest`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .config import ScoreConfig
from .manifest_check import MAX_ROWS, Check
from .manifest_parts import BankRef, Threshold, _extra, _out


@dataclass(frozen=True)
class GroupCalib:
    """Group scoring (paper 3.3, 4.5): the pooled normal groups' bank and thresholds."""

    pooling: str
    k: int
    threshold: Threshold
    cov_trace_threshold: Threshold
    bank: BankRef = BankRef()
    size: Optional[int] = None
    sizes: Optional[Tuple[int, int]] = None  # fewest and most images per normal group
    n_groups: Optional[int] = None
    source: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _TYPED = (
        "pooling",
        "k",
        "threshold",
        "cov_trace_threshold",
        "bank",
        "size",
        "sizes",
        "n_groups",
        "source",
    )

    @classmethod
    def parse(cls, c: Check, g: Mapping, files, dim: int) -> GroupCalib:
        pooling = c.choice(g, "pooling", "group.pooling", ("mean", "max"))
        bank = BankRef.parse(c, c.section(g, "bank", "group.bank"), "group.bank", files, dim)
        k = c.integer(
            g, "k", "group.k", 1, bank.n, what=f"an integer in [1, group.bank.n={bank.n}]"
        )
        th = {
            key: Threshold.parse(c, c.section(g, key, f"group.{key}"), f"group.{key}")
            for key in ("threshold", "cov_trace_threshold")
        }
        sizes = g.get("sizes")
        ok = isinstance(sizes, list) and len(sizes) == 2
        if sizes is not None and not (ok and all(type(s) is int and s >= 1 for s in sizes)):
            c.fail("group.sizes", "[fewest, most] images per group", sizes)
        src = g.get("source")
        return cls(
            pooling=pooling,
            k=k,
            bank=bank,
            size=c.integer(g, "size", "group.size", 1, MAX_ROWS, required=False),
            sizes=tuple(sizes) if sizes is not None else None,
            n_groups=c.integer(g, "n_groups", "group.n_groups", 1, MAX_ROWS, required=False),
            source=src if isinstance(src, str) else None,
            extra=_extra(g, cls._TYPED),
            **th,
        )

    def to_dict(self) -> Dict[str, Any]:
        typed = {k: getattr(self, k) for k in self._TYPED}
        for key in ("threshold", "cov_trace_threshold", "bank"):
            typed[key] = typed[key].to_dict()
        typed["sizes"] = None if self.sizes is None else list(self.sizes)
        return _out(typed, self.extra)


@dataclass(frozen=True)
class GlobalSignal:
    """The pooled-embedding signal of a view bundle: kNN over its view inputs."""

    k: int
    l2norm: bool
    threshold: Threshold
    inputs_per_image: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, c: Check, d: Mapping, score: ScoreConfig) -> GlobalSignal:
        f = "signals.global"
        return cls(
            k=c.integer(d, "k", f"{f}.k", 1, MAX_ROWS) if "k" in d else score.k,
            l2norm=c.choice(d, "l2norm", f"{f}.l2norm", (True, False))
            if "l2norm" in d
            else score.l2norm,
            threshold=Threshold.parse(
                c, c.section(d, "threshold", f"{f}.threshold"), f"{f}.threshold"
            ),
            inputs_per_image=c.integer(
                d, "inputs_per_image", f"{f}.inputs_per_image", 1, 1 << 16, required=False
            )
            or 1,
            extra=_extra(d, ("k", "l2norm", "threshold", "inputs_per_image")),
        )

    def to_dict(self) -> Dict[str, Any]:
        typed = {
            "k": self.k,
            "l2norm": self.l2norm,
            "threshold": self.threshold.to_dict(),
            "inputs_per_image": self.inputs_per_image,
        }
        return _out(typed, self.extra)


@dataclass(frozen=True)
class PatchSignal:
    """The patch signal: a coreset bank of normal patch features, how cells reduce to an
    image score, the image and pixel thresholds."""

    k: int
    reduction: str
    topk: int
    sigma: float
    threshold: Threshold
    pixel_threshold: Threshold
    bank: BankRef = BankRef()
    extra: Mapping[str, Any] = field(default_factory=dict)

    _TYPED = ("k", "reduction", "topk", "sigma", "threshold", "pixel_threshold", "bank")

    @classmethod
    def parse(cls, c: Check, d: Mapping, files) -> PatchSignal:
        f = "signals.patch"
        b = c.section(d, "bank", f"{f}.bank")
        return cls(
            k=c.integer(d, "k", f"{f}.k", 1, 1 << 10),
            reduction=c.choice(d, "reduction", f"{f}.reduction", ("topk", "max")),
            topk=c.integer(d, "topk", f"{f}.topk", 1, 1 << 20),
            sigma=c.num(d, "sigma", f"{f}.sigma", low=0.0),
            threshold=Threshold.parse(
                c, c.section(d, "threshold", f"{f}.threshold"), f"{f}.threshold"
            ),
            pixel_threshold=Threshold.parse(
                c, c.section(d, "pixel_threshold", f"{f}.pixel_threshold"), f"{f}.pixel_threshold"
            ),
            bank=BankRef.parse(c, b, f"{f}.bank", files, None),
            extra=_extra(d, cls._TYPED),
        )

    def to_dict(self) -> Dict[str, Any]:
        typed = {k: getattr(self, k) for k in self._TYPED}
        for key in ("threshold", "pixel_threshold", "bank"):
            typed[key] = typed[key].to_dict()
        return _out(typed, self.extra)


@dataclass(frozen=True)
class Signals:
    """The signals of a view bundle (``dn2.runtime.patchfit``)."""

    glob: Optional[GlobalSignal] = None
    patch: Optional[PatchSignal] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def combine(self) -> Optional[Mapping[str, Any]]:
        """Mode both: the fitted combination rule (checked by ``combine.rule_of``), or None."""
        return self.extra.get("combine")

    @property
    def calibration_pairs(self) -> Optional[Mapping[str, Any]]:
        """Mode both: {'global': [...], 'patch': [...]} held-out normal scores, or None."""
        return self.extra.get("calibration_pairs")

    def to_dict(self) -> Dict[str, Any]:
        out = dict(self.extra)
        if self.glob is not None:
            out["global"] = self.glob.to_dict()
        if self.patch is not None:
            out["patch"] = self.patch.to_dict()
        return out
