"""The building blocks of the config objects (``dn2.runtime.config``): a field's rule (type and
range, raising ``ConfigError`` named after the field), ``opt`` (default + rule + doc) and the
``_Config`` base (validation on construction, ``from_mapping``, ``replace``, ``to_dict``)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError

HNSW_KEYS = ("M", "ef_construction", "ef", "project", "rerank", "engine")  # project 0: 1 stage
HNSW_ENGINES = ("auto", "hnswlib", "faiss")  # engine: who walks a two-stage bank's graph

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
        or not all(
            x in HNSW_ENGINES if k == "engine" else _is_int(x) and x >= (0 if k == "project" else 1)
            for k, x in v.items()
        )
    ):
        raise _bad(
            name,
            f"None or a mapping of {', '.join(HNSW_KEYS[:-1])} to integers >= 1 (project >= 0)"
            f" and engine to one of {', '.join(HNSW_ENGINES)}",
            v,
        )
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
