"""``dn2 fit --append BUNDLE NEW...``: the command-line side of :mod:`dn2.runtime.fit_append`.

With ``--append`` every positional is a new normal input (no MODEL: the bundle has its own), the
bundle's fit options hold (an explicit fit option such as ``--fpr`` is a usage error; ``dn2
threshold`` re-thresholds), and only the run options apply: ``--batch``, ``--threads``,
``--providers``, ``--every``, ``--max-frames``, ``--seconds``, ``--connect-timeout``, plus
``--val-normal`` / ``--val-anomalous`` for bundles calibrated on validation images,
``--output`` (default: the bundle itself, replaced atomically) and ``--key`` (sign the result).
"""

from __future__ import annotations

import argparse

from .cliargs import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, option_names, report_error
from .errors import Dn2Error
from .fit_append import RUN_OPTIONS

# options that keep their meaning with --append (dests)
ALLOWED = set(RUN_OPTIONS) | {
    "model",
    "normal",
    "output",
    "append",
    "key",
    "val_normal",
    "val_anomalous",
    "quiet",
    "verbose",
    "config",
    "no_progress",
}


def add_append_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--append",
        metavar="BUNDLE",
        help="add the positional inputs (all of them: no MODEL) as normal images / videos "
        "to BUNDLE and recalibrate, without embedding its stored images again; the "
        "bundle's fit options hold (default output: BUNDLE itself, replaced atomically)",
    )
    p.add_argument(
        "--key",
        metavar="PRIVATE.pem",
        help="with --append: sign the new bundle with this key (needed to append to a "
        "signed bundle in place; dn2[sign])",
    )


def run_append(a: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .fit_append import append_bundle

    new = [x for x in [a.model, *(a.normal or [])] if x]
    flags = option_names(parser)
    given = [
        flags.get(dest, dest)
        for dest, value in sorted(vars(a).items())
        if dest not in ALLOWED and value != parser.get_default(dest)
    ]
    try:
        if not new:
            raise Dn2Error("--append BUNDLE: expected new normal inputs after it, found none")
        if given:
            raise Dn2Error(
                f"--append: {', '.join(given)}: expected only run options (the bundle keeps "
                "the fit options it was fitted with; dn2 threshold changes the threshold, "
                "a new fit the rest)"
            )
        out = append_bundle(
            a.append,
            new,
            a.output,
            key=a.key,
            val_normal=a.val_normal,
            val_anomalous=a.val_anomalous,
            progress=not a.quiet,
            **{k: getattr(a, k) for k in RUN_OPTIONS},
        )
    except Dn2Error as exc:
        report_error("fit", exc, parser)
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error("fit", "interrupted; nothing written")
        return EXIT_INTERRUPTED
    print(out)
    return EXIT_OK
