"""The bundle manifest's schema, checked in one place before any of it is used.

:func:`validate_manifest` walks the fields the runtime reads (``model``, ``bank``, ``score``,
``threshold``, ``group``, ``signals.patch``, ``files``) and raises a ``BundleError`` naming the
field, what was expected and what was found: a missing section, a string where a number
belongs, ``true`` for a number (JSON booleans are not numbers here), a list for a file name,
a count of 10^12 rows. Fields it does not know are kept (records such as ``fit`` are free
form). Cross-field rules: ``bank.dim == model.dim``, ``1 <= score.k <= bank.n``, every named
file listed in ``files`` with the same sha256.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, Optional

from .errors import BundleError

METRIC = "sqeuclidean"
MAX_ROWS = 1 << 34  # 17 billion: far beyond any bank, below what overflows an int64 product
_SHA = re.compile(r"^[0-9a-f]{64}$")


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


class _Check:
    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, expected: str, value: Any) -> None:
        found = "nothing (missing)" if value is _MISSING else _show(value)
        raise BundleError(f"bundle {self.where}: {field}: expected {expected}, found {found}")

    def section(self, parent: Dict, key: str, field: str, required: bool = True) -> Optional[Dict]:
        v = parent.get(key, _MISSING)
        if v is _MISSING or v is None:
            if required:
                raise BundleError(
                    f"bundle {self.where}: expected a {field!r} section, found "
                    f"{'none' if v is _MISSING else 'null'}"
                )
            return None
        if not isinstance(v, dict):
            self.fail(field, "an object", v)
        return v

    def integer(
        self,
        sec: Dict,
        key: str,
        field: str,
        lo: int,
        hi: int,
        required: bool = True,
        what: str = "",
    ) -> Optional[int]:
        v = sec.get(key, _MISSING)
        if v is _MISSING and not required:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(field, what or f"an integer in [{lo}, {hi}]", v)
        return v

    def num(self, sec: Dict, key: str, field: str, low: Optional[float] = None) -> float:
        v = sec.get(key, _MISSING)
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or (low is not None and v < low)
        ):
            self.fail(field, "a finite number" + (f" >= {low:g}" if low is not None else ""), v)
        return float(v)

    def choice(self, sec: Dict, key: str, field: str, options, default=_MISSING) -> Any:
        v = sec.get(key, default)
        if not any(type(v) is type(o) and v == o for o in options):  # true is not 1
            exp = " or ".join(
                repr(o) if not isinstance(o, bool) else str(o).lower() for o in options
            )
            self.fail(field, exp, v)
        return v

    def text(self, sec: Dict, key: str, field: str, required: bool = True) -> Optional[str]:
        v = sec.get(key, _MISSING)
        if v is _MISSING and not required:
            return None
        if not isinstance(v, str) or not v or len(v) > 4096:
            self.fail(field, "a non-empty string", v)
        return v


def _show(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list)) else f"{type(v).__name__} of {len(v)}"
    if isinstance(v, bool) or v is None:
        text = str(v).lower() if v is not None else "null"
    return text if len(text) <= 60 else text[:57] + "..."


def _files(c: _Check, m: Dict) -> Dict[str, str]:
    files = c.section(m, "files", "files")
    for name, digest in files.items():
        if not isinstance(name, str) or name != os.path.basename(name) or name in ("", ".", ".."):
            c.fail("files", "plain file names", name)
        if not isinstance(digest, str) or not _SHA.match(digest):
            c.fail(f"files.{name}", "a sha256 (64 hex digits)", digest)
    return files


def _named_file(c: _Check, sec: Dict, field: str, files: Dict[str, str]) -> None:
    name = sec.get("file", _MISSING)
    if not isinstance(name, str) or name not in files:
        c.fail(f"{field}.file", f"one of {sorted(files)}", name)
    digest = sec.get("sha256", _MISSING)
    if digest != files[name]:
        c.fail(f"{field}.sha256", f"{files[name]} (files.{name})", digest)


def _bank(c: _Check, b: Dict, field: str, files: Dict[str, str], dim: int) -> int:
    kind = c.choice(b, "kind", f"{field}.kind", ("exact", "hnsw"))
    _named_file(c, b, field, files)
    n = c.integer(b, "n", f"{field}.n", 1, MAX_ROWS)
    c.integer(b, "dim", f"{field}.dim", dim, dim, what=f"the model's dim {dim}")
    c.choice(b, "metric", f"{field}.metric", (METRIC,))
    if kind == "hnsw":
        c.integer(b, "M", f"{field}.M", 2, 10_000)
        c.integer(b, "ef_construction", f"{field}.ef_construction", 1, 1 << 20)
        c.integer(b, "ef", f"{field}.ef", 1, 1 << 20)
        c.integer(b, "seed", f"{field}.seed", 0, (1 << 63) - 1, required=False)
    return n


def validate_manifest(m: Any, where: str) -> Dict:
    """Check the parsed dn2.json against the schema; returns it unchanged (BundleError)."""
    c = _Check(where)
    if not isinstance(m, dict):
        c.fail("dn2.json", "a JSON object", m)
    for key in ("model", "bank", "score", "threshold", "files"):
        c.section(m, key, key)
    files = _files(c, m)
    mod = m["model"]
    _named_file(c, mod, "model", files)
    dim = c.integer(mod, "dim", "model.dim", 1, 1 << 16)
    c.integer(mod, "input", "model.input", 8, 8192)
    c.text(mod, "arch", "model.arch")
    n = _bank(c, m["bank"], "bank", files, dim)
    sc = m["score"]
    c.integer(sc, "k", "score.k", 1, n, what=f"an integer in [1, bank.n={n}]")
    c.choice(sc, "reduction", "score.reduction", ("mean",))
    c.choice(sc, "l2norm", "score.l2norm", (True, False))
    c.choice(sc, "jpeg_draft", "score.jpeg_draft", (True, False), default=False)
    c.choice(sc, "color", "score.color", ("gray", "color"), default="color")
    c.text(sc, "mode", "score.mode", required=False)
    c.num(m["threshold"], "value", "threshold.value", low=0.0)
    g = c.section(m, "group", "group", required=False)
    if g is not None:
        c.choice(g, "pooling", "group.pooling", ("mean", "max"))
        gn = _bank(c, c.section(g, "bank", "group.bank"), "group.bank", files, dim)
        c.integer(g, "k", "group.k", 1, gn, what=f"an integer in [1, group.bank.n={gn}]")
        for key in ("threshold", "cov_trace_threshold"):
            c.num(c.section(g, key, f"group.{key}"), "value", f"group.{key}.value")
    sig = c.section(m, "signals", "signals", required=False)
    ps = c.section(sig, "patch", "signals.patch", required=False) if sig else None
    if ps is not None:
        pb = c.section(ps, "bank", "signals.patch.bank")
        _named_file(c, pb, "signals.patch.bank", files)
        for key in ("threshold", "pixel_threshold"):
            c.num(c.section(ps, key, f"signals.patch.{key}"), "value", f"signals.patch.{key}.value")
    return m
