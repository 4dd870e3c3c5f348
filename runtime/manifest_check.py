"""Field checks for the bundle manifest: each failure is one ``BundleError`` naming the field,
what was expected and what was found (``bundle B: score.k: expected an integer in [1, 300],
found 'abc'``). JSON booleans are not numbers here, a list is not a file name, a count of
10^12 rows is refused. Used only by :mod:`dn2.runtime.manifest`, which parses dn2.json once.

A checker made with ``v1=True`` reads a schema-1 manifest: fields that schema left optional
get their schema-1 default (``default=``); under schema 2 they are required.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import BundleError

METRIC = "sqeuclidean"
MAX_ROWS = 1 << 34  # 17 billion: far beyond any bank, below what overflows an int64 product
_SHA = re.compile(r"^[0-9a-f]{64}$")


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()


def show(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list)) else f"{type(v).__name__} of {len(v)}"
    if isinstance(v, bool) or v is None:
        text = str(v).lower() if v is not None else "null"
    return text if len(text) <= 60 else text[:57] + "..."


class Check:
    def __init__(self, where: str, v1: bool = False):
        self.where, self.v1 = where, v1

    def fail(self, field: str, expected: str, value: Any) -> None:
        found = "nothing (missing)" if value is MISSING else show(value)
        raise BundleError(f"bundle {self.where}: {field}: expected {expected}, found {found}")

    def _get(self, sec: Mapping, key: str, default: Any) -> Any:
        """The value, or (schema 1 only) ``default`` where the key is absent."""
        v = sec.get(key, MISSING)
        return default if v is MISSING and self.v1 and default is not MISSING else v

    def section(self, parent: Mapping, key: str, field: str, required: bool = True):
        v = parent.get(key, MISSING)
        if v is MISSING or v is None:
            if required:
                raise BundleError(
                    f"bundle {self.where}: expected a {field!r} section, found "
                    f"{'none' if v is MISSING else 'null'}"
                )
            return None
        if not isinstance(v, dict):
            self.fail(field, "an object", v)
        return v

    def integer(
        self,
        sec: Mapping,
        key: str,
        field: str,
        lo: int,
        hi: int,
        required: bool = True,
        what: str = "",
    ) -> Optional[int]:
        v = sec.get(key, MISSING)
        if (v is MISSING or v is None) and not required:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(field, what or f"an integer in [{lo}, {hi}]", v)
        return int(v)

    def num(
        self, sec: Mapping, key: str, field: str, low: Optional[float] = None, required=True
    ) -> Optional[float]:
        v = sec.get(key, MISSING)
        if (v is MISSING or v is None) and not required:
            return None
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or (low is not None and v < low)
        ):
            self.fail(field, "a finite number" + (f" >= {low:g}" if low is not None else ""), v)
        return float(v)

    def choice(self, sec: Mapping, key: str, field: str, options, default=MISSING) -> Any:
        v = self._get(sec, key, default)
        if not any(type(v) is type(o) and v == o for o in options):  # true is not 1
            exp = " or ".join(
                repr(o) if not isinstance(o, bool) else str(o).lower() for o in options
            )
            self.fail(field, exp, v)
        return v

    def text(self, sec: Mapping, key: str, field: str, required: bool = True) -> Optional[str]:
        v = sec.get(key, MISSING)
        if (v is MISSING or v is None) and not required:
            return None
        if not isinstance(v, str) or not v or len(v) > 4096:
            self.fail(field, "a non-empty string", v)
        return v

    def record(self, sec: Mapping, key: str, field: str) -> Optional[Dict]:
        """An optional free-form object (a report the runtime only shows)."""
        v = sec.get(key)
        if v is not None and not isinstance(v, dict):
            self.fail(field, "an object or null", v)
        return v

    def numbers(self, sec: Mapping, key: str, field: str) -> Optional[Tuple[float, ...]]:
        v = sec.get(key)
        if v is None:
            return None
        ok = isinstance(v, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
        )
        if not ok:
            self.fail(field, "a list of finite numbers", v)
        return tuple(float(x) for x in v)

    def table(self, sec: Mapping, key: str, field: str) -> Dict[str, float]:
        """An optional object of finite numbers (quantile -> score)."""
        v = sec.get(key)
        if v is None:
            return {}
        ok = isinstance(v, dict) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in v.values()
        )
        if not ok:
            self.fail(field, "an object of finite numbers", v)
        return {str(k): float(x) for k, x in v.items()}

    def files(self, m: Mapping) -> Dict[str, str]:
        files = self.section(m, "files", "files")
        for name, digest in files.items():
            if (
                not isinstance(name, str)
                or name != os.path.basename(name)
                or name in ("", ".", "..")
            ):
                self.fail("files", "plain file names", name)
            if not isinstance(digest, str) or not _SHA.match(digest):
                self.fail(f"files.{name}", "a sha256 (64 hex digits)", digest)
        return dict(files)

    def named_file(self, sec: Mapping, field: str, files: Mapping[str, str]) -> Tuple[str, str]:
        name = sec.get("file", MISSING)
        if not isinstance(name, str) or name not in files:
            self.fail(f"{field}.file", f"one of {sorted(files)}", name)
        digest = sec.get("sha256", MISSING)
        if digest != files[name]:
            self.fail(f"{field}.sha256", f"{files[name]} (files.{name})", digest)
        return name, digest
