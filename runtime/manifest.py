"""The bundle manifest (dn2.json) as typed frozen objects, parsed and checked in one place.

``parse_manifest(raw, where)`` checks the parsed JSON once (types, ranges, cross-field rules:
``bank.dim == model.dim``, ``1 <= score.k <= bank.n``, every named file listed in ``files``
with the same sha256) and hands back a :class:`Manifest`; every reader outside this module and
``dn2.runtime.bundle`` uses its attributes (``m.threshold.value``, ``m.score.k``,
``m.group.bank``). ``Manifest.to_dict()`` is the JSON of schema version 2; fit writers build the
objects and ``dn2.runtime.bundle.write_bundle`` fills in files, digests and bank parameters.

Schema 2 against schema 1: ``score`` names every choice (``jpeg_draft``, ``color``, ``mode``,
``combine``; schema 1 left them out for their defaults), ``model.outputs`` lists the graph's
named outputs (model contract v2). A schema-1 manifest is converted on read (the defaults
filled in, ``model.outputs`` not recorded); any other version is refused with how to refit.
Fields a section does not type (records such as ``fit.streams``) are kept in its ``extra``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import COMBINES, MODES, FitConfig, ScoreConfig
from .errors import BundleError, Dn2Error
from .manifest_check import Check
from .manifest_fit import FitRecord
from .manifest_parts import BankRef, ModelRef, ScoreTail, Threshold, _extra
from .manifest_signals import GlobalSignal, GroupCalib, PatchSignal, Signals
from .views import View

SCHEMA = "dn2-bundle"
SCHEMA_VERSION = 2
CONVERTIBLE = (1,)  # older schema versions read by conversion
REFIT = "dn2 fit MODEL.onnx NORMAL_IMAGES --output BUNDLE"

__all__ = [
    "BankRef",
    "FitRecord",
    "GlobalSignal",
    "GroupCalib",
    "Manifest",
    "ModelRef",
    "PatchSignal",
    "ScoreTail",
    "Signals",
    "Threshold",
    "parse_manifest",
]


def _parse_score(c: Check, d: Mapping, n: int) -> ScoreConfig:
    k = c.integer(d, "k", "score.k", 1, n, what=f"an integer in [1, bank.n={n}]")
    cfg = dict(
        k=k,
        reduction=c.choice(d, "reduction", "score.reduction", ("mean",)),
        l2norm=c.choice(d, "l2norm", "score.l2norm", (True, False)),
        jpeg_draft=c.choice(d, "jpeg_draft", "score.jpeg_draft", (True, False), default=False),
        color=c.choice(d, "color", "score.color", ("gray", "color"), default="color"),
        mode=c.choice(d, "mode", "score.mode", MODES, default="global"),
        combine=c.choice(d, "combine", "score.combine", COMBINES, default="max"),
    )
    return ScoreConfig(**cfg)


@dataclass(frozen=True)
class Manifest:
    """A whole dn2.json. ``converted_from``: the schema version read when it was older."""

    model: ModelRef
    bank: BankRef
    score: ScoreConfig
    threshold: Threshold
    fit: FitRecord = FitRecord()
    group: Optional[GroupCalib] = None
    signals: Optional[Signals] = None
    view: Optional[View] = None
    files: Mapping[str, str] = field(default_factory=dict)
    dn2_version: str = ""
    converted_from: Optional[int] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _TOP = (
        "schema",
        "schema_version",
        "dn2_version",
        "model",
        "bank",
        "score",
        "threshold",
        "fit",
        "group",
        "signals",
        "view",
        "files",
    )

    @property
    def fit_config(self) -> Optional[FitConfig]:
        return self.fit.config

    @property
    def patch(self) -> Optional[PatchSignal]:
        return self.signals.patch if self.signals is not None else None

    def banks(self) -> List[Tuple[str, BankRef]]:
        """(stem, reference) of every bank: bank, group_bank, patch_bank."""
        out = [("bank", self.bank)]
        if self.group is not None:
            out.append(("group_bank", self.group.bank))
        if self.patch is not None:
            out.append(("patch_bank", self.patch.bank))
        return out

    def with_banks(self, refs: Mapping[str, BankRef]) -> Manifest:
        """A copy with the banks of ``refs`` (keyed by stem) replaced."""
        m = dataclasses.replace(self, bank=refs.get("bank", self.bank))
        if "group_bank" in refs:
            m = dataclasses.replace(m, group=dataclasses.replace(m.group, bank=refs["group_bank"]))
        if "patch_bank" in refs:
            sig = m.signals
            patch = dataclasses.replace(sig.patch, bank=refs["patch_bank"])
            m = dataclasses.replace(m, signals=dataclasses.replace(sig, patch=patch))
        return m

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON of schema version ``SCHEMA_VERSION``."""
        out = dict(self.extra)
        out.update(
            schema=SCHEMA,
            schema_version=SCHEMA_VERSION,
            dn2_version=self.dn2_version,
            model=self.model.to_dict(),
            bank=self.bank.to_dict(),
            score=self.score.to_dict(),
            threshold=self.threshold.to_dict(),
            fit=self.fit.to_dict(),
            group=None if self.group is None else self.group.to_dict(),
            files=dict(self.files),
        )
        if self.signals is not None:
            out["signals"] = self.signals.to_dict()
        if self.view is not None:
            out["view"] = self.view.to_dict()
        return out


def parse_manifest(m: Any, where: str) -> Manifest:
    """Check the parsed dn2.json (schema 2, or 1 converted) -> a Manifest (BundleError)."""
    from .version import __version__

    c = Check(where)
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        found = m.get("schema") if isinstance(m, dict) else m
        raise BundleError(f"bundle {where}: expected schema {SCHEMA!r}, found {found!r}")
    ver = m.get("schema_version")
    if type(ver) is not int or ver not in (SCHEMA_VERSION,) + CONVERTIBLE:
        raise BundleError(
            f"bundle {where}: expected schema_version {SCHEMA_VERSION} (or "
            f"{', '.join(map(str, CONVERTIBLE))}, converted on read), found {ver!r} (written by "
            f"dn2 {m.get('dn2_version')}, this is dn2 {__version__}); refit it with this dn2: "
            f"{REFIT}"
        )
    c.v1 = ver == 1
    for key in ("model", "bank", "score", "threshold", "files"):
        c.section(m, key, key)
    files = c.files(m)
    model = ModelRef.parse(c, m["model"], files)
    bank = BankRef.parse(c, m["bank"], "bank", files, model.dim)
    score = _parse_score(c, m["score"], bank.n)
    threshold = Threshold.parse(c, m["threshold"], "threshold", low=0.0)
    g = c.section(m, "group", "group", required=False)
    group = GroupCalib.parse(c, g, files, model.dim) if g is not None else None
    sig = c.section(m, "signals", "signals", required=False)
    signals = None
    if sig is not None:
        gs = c.section(sig, "global", "signals.global", required=False)
        ps = c.section(sig, "patch", "signals.patch", required=False)
        signals = Signals(
            glob=GlobalSignal.parse(c, gs, score) if gs is not None else None,
            patch=PatchSignal.parse(c, ps, files) if ps is not None else None,
            extra=_extra(sig, ("global", "patch")),
        )
    view = None
    if m.get("view") is not None:
        try:
            view = View.from_dict(c.section(m, "view", "view"))
        except Dn2Error as exc:
            raise BundleError(f"bundle {where}: {exc}") from None
    fit = FitRecord.parse(c, c.section(m, "fit", "fit", required=False) or {}, files)
    dv = m.get("dn2_version")
    return Manifest(
        model=model,
        bank=bank,
        score=score,
        threshold=threshold,
        fit=fit,
        group=group,
        signals=signals,
        view=view,
        files=files,
        dn2_version=dv if isinstance(dv, str) else "",
        converted_from=ver if ver != SCHEMA_VERSION else None,
        extra=_extra(m, Manifest._TOP),
    )


def validate_manifest(m: Any, where: str) -> Manifest:
    """The same as :func:`parse_manifest` (the name older callers know)."""
    return parse_manifest(m, where)
