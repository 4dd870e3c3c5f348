"""What every dn2 subcommand shares: the exit-code table, parent parsers, logging, ``--config``.

Each subcommand (``dn2 fit``, ``dn2 score``, ...) builds its parser with
``parents=[common_parser(), engine_parser()]`` and the exit-code epilog, parses with
:func:`parse_args` (which applies ``--config FILE`` under the command line) and sets up the
standard ``logging`` module with :func:`setup_logging`. The library itself only logs to the
``dn2`` logger, which has no handler of its own: a Python caller sees nothing unless it asks.

This module is torch-free and imports nothing heavy; it is the bottom of the CLI layer, so
dn2.export and dn2.tools use it too.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from .cliconfig import apply_config, load_config
from .errors import Dn2Error

EXIT_OK = 0  # done
EXIT_FAILED = 1  # some inputs failed (each reported); the others were done
EXIT_USAGE = 2  # usage error, bad bundle / model / config, or an error before any result
EXIT_SOURCE_LOST = 3  # the source was lost and could not be reopened
EXIT_UNWRITTEN = 4  # the run went to its end, but some output could not be written
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = (
    (EXIT_OK, "done"),
    (EXIT_FAILED, "some inputs failed (each one reported); the others were done"),
    (
        EXIT_USAGE,
        "usage error, bad bundle, model or config, or another error that stopped "
        "the command before any result; nothing written",
    ),
    (
        EXIT_SOURCE_LOST,
        "the source was lost and could not be reopened, or frames of a damaged "
        "video file could not be read (watch; the summary counts them)",
    ),
    (
        EXIT_UNWRITTEN,
        "the run went to its end, but some output could not be written (watch: "
        "events, snapshots, scores, video; the summary says which)",
    ),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)
EXIT_EPILOG = "exit codes (the same for every dn2 command):\n" + "\n".join(
    textwrap.fill(text, 92, initial_indent=f"  {code:<4d}", subsequent_indent=" " * 6)
    for code, text in EXIT_CODES
)

LOGGER = "dn2"
_dispatched = {"on": False}


def set_dispatched(on: bool = True) -> None:
    """Called by the ``dn2`` dispatcher: messages then say ``dn2 fit``, not ``dn2-fit``."""
    _dispatched["on"] = on


def prog(name: str) -> str:
    """The command's name as the user typed it: ``dn2 fit`` or the alias ``dn2-fit``."""
    return f"dn2 {name}" if _dispatched["on"] else f"dn2-{name}"


def epilog(*parts: str) -> str:
    """The subcommand's own epilog text, then the shared exit-code table."""
    return "\n\n".join([p.rstrip() for p in parts if p] + [EXIT_EPILOG])


def common_parser() -> argparse.ArgumentParser:
    """``-q`` / ``-v`` and ``--config FILE``: every subcommand has them."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output and configuration")
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors on stderr; no progress bars",
    )
    g.add_argument(
        "-v", "--verbose", action="count", default=0, help="more detail on stderr (debug messages)"
    )
    g.add_argument(
        "--config",
        metavar="FILE",
        help="read options from a TOML (or YAML, with pyyaml) file whose keys are "
        'the option names (e.g. fpr = 0.01, val_normal = ["dir"]); the '
        "command line overrides it",
    )
    return p


def engine_parser(batch: int = 8, threads: Optional[int] = None) -> argparse.ArgumentParser:
    """``--threads``, ``--providers``, ``--batch``: every subcommand that runs the model."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("inference")
    g.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="onnxruntime intra-op threads (default: "
        + (f"{threads})" if threads else "onnxruntime's choice)"),
    )
    g.add_argument(
        "--providers",
        default="auto",
        help="auto (TensorRT > CUDA > CPU), or a comma-separated list (e.g. cuda,cpu)",
    )
    g.add_argument(
        "--batch",
        "--batch-size",
        dest="batch",
        type=int,
        default=batch,
        metavar="N",
        help=f"images per inference batch (default {batch})",
    )
    return p


def new_parser(
    name: str, description: str, *parents: argparse.ArgumentParser, extra_epilog: str = ""
) -> argparse.ArgumentParser:
    """A subcommand's parser: its name, the shared options and the exit-code epilog."""
    return argparse.ArgumentParser(
        prog=prog(name),
        description=description,
        epilog=epilog(extra_epilog),
        parents=[common_parser(), *parents],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def json_output_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json`` (machine-readable output on stdout, as in every subcommand) and
    ``--json-out FILE`` (``-``: stdout). ``--json FILE`` is kept as the old spelling of
    ``--json-out FILE``."""
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help=f"machine-readable output: {what} as JSON on stdout "
        "(--json FILE: the old spelling of --json-out FILE)",
    )
    parser.add_argument(
        "--json-out", metavar="FILE", help=f"write {what} as JSON to FILE ('-': stdout)"
    )


def write_text(path: str, text: str, flag: str = "--output") -> None:
    """Write ``text`` to ``path``; ``-`` is stdout. An unwritable path is a Dn2Error."""
    if path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    except OSError as exc:
        raise Dn2Error(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest's capture swaps it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(quiet: bool = False, verbose: int = 0) -> logging.Logger:
    """Route the ``dn2`` logger to stderr: INFO by default, WARNING with ``-q``, DEBUG with
    ``-v``. Idempotent (a second call replaces the handler)."""
    log = logging.getLogger(LOGGER)
    for h in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(h)
    h = _StderrHandler()
    h.setFormatter(logging.Formatter("%(name)s: %(message)s" if verbose else "%(message)s"))
    log.addHandler(h)
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return log


def _flag(action: argparse.Action) -> str:
    return (
        action.option_strings[-1]
        if not action.option_strings
        else max(action.option_strings, key=len)
    )


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Optional[List[str]] = None,
    aliases: Optional[Mapping[str, str]] = None,
) -> argparse.Namespace:
    """``parser.parse_args`` with ``--config FILE`` applied first (the command line wins)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        apply_config(parser, load_config(known.config), known.config, aliases)
    return parser.parse_args(argv)


def start(
    parser: argparse.ArgumentParser,
    argv: Optional[List[str]],
    name: str,
    aliases: Optional[Mapping[str, str]] = None,
):
    """The start of every subcommand's ``main``: parse (``--config`` first), report a bad
    config, set up logging. Returns the arguments, or the exit code to return at once."""
    try:
        a = parse_args(parser, argv, aliases)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    except Dn2Error as exc:  # --config
        report_error(name, exc)
        return EXIT_USAGE
    setup_logging(a.quiet, a.verbose)
    return a


def library_kwargs(
    target, args: argparse.Namespace, aliases: Optional[Mapping[str, str]] = None, **overrides
) -> Dict:
    """The keyword arguments of ``target`` -- a library function or a config dataclass -- taken
    from the parsed options: every parameter (or field) whose name, or its alias in
    ``aliases`` (parameter -> option dest), is an option. ``overrides`` win. So an option whose
    dest is the parameter's name reaches the library with no code in between."""
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(target):
        names = [f.name for f in dataclasses.fields(target) if f.init]
    else:
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names = [p.name for p in inspect.signature(target).parameters.values() if p.kind in kinds]
        config_type = getattr(target, "config_type", None)  # e.g. fit_bundle -> FitConfig
        if config_type is not None:  # its fields are keyword options of the function too;
            names = [n for n in names if n != "config"]  # --config is the options' file
            names += [f.name for f in dataclasses.fields(config_type) if f.init]
    given = vars(args)
    out = {}
    for name in names:
        dest = (aliases or {}).get(name, name)
        if dest in given:
            out[name] = given[dest]
    out.update(overrides)
    return out


def option_names(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """dest -> the flag a user types (``val_normal`` -> ``--val-normal``; positionals upper)."""
    out = {}
    for a in parser._actions:
        if a.dest in ("help", argparse.SUPPRESS):
            continue
        out[a.dest] = _flag(a) if a.option_strings else (a.metavar or a.dest).upper()
    return out


def error_text(
    exc,
    parser: Optional[argparse.ArgumentParser] = None,
    aliases: Optional[Mapping[str, str]] = None,
) -> str:
    """An error in the caller's words. A library error about one parameter carries its Python
    name in ``exc.param`` (and says it in the message, e.g. "fpr expected in (0, 1), found 2");
    on the command line that name becomes the flag the user typed ("--fpr expected ...").
    ``aliases`` maps parameter names that differ from option names (``n_groups`` -> ``groups``).
    """
    msg = str(exc)
    first = getattr(exc, "param", None)
    if not first or parser is None:
        return msg
    names = option_names(parser)
    for param in getattr(exc, "params", None) or (first,):  # every parameter it names
        flag = names.get((aliases or {}).get(param, param)) or names.get(param)
        if not flag:
            continue
        # the name as a word: not inside another name, a dotted field or a path
        msg = re.sub(rf"(?<![\w/-]){re.escape(param)}=", f"{flag} ", msg)
        msg = re.sub(rf"(?<![\w./-]){re.escape(param)}(?![\w/-]|://)", flag, msg)
    return msg


def report_error(name: str, exc: BaseException, parser=None, aliases=None) -> None:
    print(f"{prog(name)}: error: {error_text(exc, parser, aliases)}", file=sys.stderr, flush=True)
