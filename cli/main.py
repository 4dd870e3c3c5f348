"""``dn2 SUBCOMMAND [options]``: dispatch to the subcommand registered in registry.py.

dn2 --version
dn2 --help                 the subcommands and the exit-code table
dn2 [-q|-v] fit ...        -q / -v before the subcommand are passed on to it
"""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import Callable, List, Optional

from .registry import COMMANDS, Command

DN2_PACKAGES = ("dn2",)


def _version() -> str:
    from dn2.runtime.version import __version__

    return __version__


def usage() -> str:
    from dn2.runtime.cliargs import EXIT_EPILOG

    width = max(map(len, COMMANDS))
    lines = [
        "usage: dn2 [--version] [-q|-v] SUBCOMMAND [options]",
        "",
        "Deep Nearest-Neighbour anomaly detection, from export to the camera.",
        "",
        "subcommands (dn2 SUBCOMMAND --help for each one's options):",
    ]
    for name, cmd in COMMANDS.items():
        needs = f"  [dn2[{cmd.extra}]]" if cmd.extra else ""
        lines.append(f"  {name:<{width}}  {cmd.summary}{needs}")
    lines += ["", "dn2-NAME (dn2-fit, dn2-score, ...) is an alias of dn2 NAME.", "", EXIT_EPILOG]
    return "\n".join(lines)


def _missing(exc: ImportError) -> Optional[str]:
    """The top-level module that is missing, unless it is part of dn2 itself."""
    name = getattr(exc, "name", None)
    if not name:
        return None
    top = name.split(".")[0]
    return None if top in DN2_PACKAGES else top


def _missing_message(name: str, cmd: Command, module: str) -> str:
    fix = (
        f"pip install 'dn2[{cmd.extra}]'"
        if cmd.extra
        else "reinstall dn2 (pip install --force-reinstall dn2)"
    )
    return f"dn2 {name}: error: {module} is not installed: {fix}"


def resolve(name: str) -> Callable[[List[str]], int]:
    """Import the subcommand's function (raises ImportError as the import does)."""
    module, func = COMMANDS[name].target.split(":")
    return getattr(importlib.import_module(module), func)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passed = []  # -q / -v given before the subcommand
    while argv and argv[0] in ("-q", "--quiet", "-v", "--verbose", "-vv"):
        passed.append(argv.pop(0))
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    first = argv[0]
    if first in ("-h", "--help", "help"):
        print(usage())
        return 0
    if first in ("-V", "--version"):
        print(f"dn2 {_version()}")
        return 0
    if first not in COMMANDS:
        print(
            f"dn2: error: unknown subcommand '{first}'{_suggest(first)} "
            f"(expected one of: {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return 2
    cmd = COMMANDS[first]
    from dn2.runtime.cliargs import set_dispatched

    set_dispatched(True)
    try:
        try:
            fn = resolve(first)
        except ImportError as exc:
            module = _missing(exc)
            if module is None:
                raise
            print(_missing_message(first, cmd, module), file=sys.stderr)
            return 2
        try:
            rc = fn(argv[1:] + passed)
        except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except ImportError as exc:  # an optional dependency imported while it ran
            module = _missing(exc)
            if module is None:
                raise
            print(_missing_message(first, cmd, module), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"dn2 {first}: interrupted", file=sys.stderr)
            return 130
        return int(rc or 0)
    finally:
        set_dispatched(False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
