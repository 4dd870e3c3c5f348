"""``--config FILE``: a TOML or YAML file whose keys are a command's options (or the library's
parameter names), applied as the parser's defaults so the command line overrides them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Mapping, Optional

from .errors import ConfigError, MissingExtraError


def load_config(path: str) -> Dict:
    """A TOML (``.toml``) or YAML (``.yaml`` / ``.yml``) file as a flat mapping."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MissingExtraError("pyyaml", "config", f"YAML config {path}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    elif suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            try:
                import tomli as tomllib
            except ImportError:
                raise MissingExtraError("tomli", "config", f"TOML config {path}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    else:
        raise ConfigError(
            f"--config {path}: expected a .toml, .yaml or .yml file, found {suffix or 'no suffix'}"
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {path}: expected a table of option = value, found {type(data).__name__}"
        )
    return data


def _config_value(action: argparse.Action, key: str, value, path: str):
    """Check and convert one config value the way argparse would treat the flag."""
    where = f"--config {path}: {key}"
    if isinstance(
        action,
        (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction),
    ):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} expects true or false, found {value!r}")
        # the option's own value: a store_false flag (--no-x, dest x) takes x = false as is
        return value
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} expects an integer, found {value!r}")
        return value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not many and len(items) != 1:
        raise ConfigError(f"{where} expects one value, found a list {value!r}")
    out = []
    for item in items:
        if isinstance(item, (dict, list)):
            raise ConfigError(f"{where} expects a value, found {item!r}")
        if action.type is not None and not isinstance(item, bool):
            try:
                item = action.type(item)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None
        elif action.type is None and not isinstance(item, str):
            item = str(item)
        if action.choices is not None and item not in action.choices:
            raise ConfigError(
                f"{where} must be one of {', '.join(map(str, action.choices))}, found {item!r}"
            )
        out.append(item)
    return out if many else out[0]


def apply_config(
    parser: argparse.ArgumentParser,
    config: Mapping,
    path: str = "FILE",
    aliases: Optional[Mapping[str, str]] = None,
) -> None:
    """Make ``config``'s values the parser's defaults, so the command line overrides them.

    Keys are option names (``fpr``, ``val_normal`` or ``val-normal``) or, through
    ``aliases``, the library's parameter names. A key that is no option is an error naming it.
    """
    by_dest = {
        a.dest: a for a in parser._actions if a.dest not in ("help", "config", argparse.SUPPRESS)
    }
    aliases = dict(aliases or {})
    defaults = {}
    for key, value in config.items():
        dest = aliases.get(key, str(key).replace("-", "_"))
        action = by_dest.get(dest)
        if action is None:
            known = sorted(set(by_dest) | set(aliases))
            raise ConfigError(
                f"--config {path}: unknown key {key!r}; expected one of: {', '.join(known)}"
            )
        defaults[dest] = _config_value(action, key, value, path)
        action.required = False
        if not action.option_strings:  # a positional given in the file may be left out
            action.nargs = "*" if action.nargs in ("+", "*") else "?"
    for group in parser._mutually_exclusive_groups:  # one of them given in the file
        if any(a.dest in defaults for a in group._group_actions):
            group.required = False
    parser.set_defaults(**defaults)
