"""dn2 threshold: re-threshold a bundle from the calibration scores stored at fit.

    dn2 threshold BUNDLE (--fpr F | --value T) [--output NEW]

No image is embedded again: ``--fpr`` recomputes the conformal quantile from the scores the fit
stored (manifest ``threshold.scores``: their count and the largest of them), ``--value`` sets
the threshold as given. The manifest is rewritten atomically (a temp file renamed over it), or
with ``--output`` the bundle is copied to NEW with the new threshold. A signed bundle is never
changed in place (its signature would no longer match): write it to ``--output`` and sign that.

Exit codes: 0 written; 2 usage error, a bad bundle, or an fpr the stored scores cannot resolve.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from .cliargs import EXIT_OK, EXIT_USAGE, new_parser, report_error, start
from .errors import Dn2Error


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "threshold",
        __doc__.splitlines()[0].split(": ", 1)[1],
        extra_epilog="exit 2 here: usage error, a bad bundle, or an fpr the stored "
        "scores cannot resolve",
    )
    p.add_argument("bundle", help="bundle directory written by dn2 fit")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--fpr", type=float, help="target false-positive rate on normal images")
    how.add_argument("--value", type=float, help="the threshold itself")
    p.add_argument("--output", "-o", help="write a copy here instead of changing BUNDLE")
    return p


def rethreshold_bundle(
    bundle, fpr: Optional[float] = None, value: Optional[float] = None, output=None
) -> dict:
    """Set the threshold of ``bundle`` (written to ``output`` if given); returns the new
    manifest ``threshold`` section."""
    from .bundle import read_manifest, write_manifest
    from .threshold import rethreshold

    src = Path(bundle)
    m = read_manifest(src)  # checks every file's digest first
    th = m.threshold
    if (fpr is None) == (value is None):
        raise Dn2Error("threshold: expected exactly one of fpr or value", params=("fpr", "value"))
    if fpr is not None:
        if not th.scores:
            raise Dn2Error(
                f"bundle {src}: expected calibration scores in the manifest "
                "(threshold.scores, stored by this dn2 version's fit), found none; "
                "refit, or give a value",
                params=("fpr", "value"),
            )
        c = rethreshold(th.scores.to_dict(), fpr)
        th = th.replace(
            value=c["value"],
            method="fpr",
            fpr=float(fpr),
            candidates={**th.candidates, "fpr": c},
        )
    else:
        if not math.isfinite(value) or value <= 0:
            raise Dn2Error(f"value: expected a positive number, found {value}", param="value")
        th = th.replace(value=float(value), method="value")
    m = m.replace(threshold=th)
    signed = (src / "dn2.sig").exists()
    if output is None:
        if signed:
            raise Dn2Error(
                f"bundle {src} is signed: changing its threshold in place would "
                "break the signature; write a copy to a new output and sign it",
                param="output",
            )
        write_manifest(src, m)
        return th.to_dict()
    out = Path(output).absolute()
    if out.exists():
        raise Dn2Error(f"output {out}: expected a new path, found it exists", param="output")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.copytree(src, tmp)
    try:
        (tmp / "dn2.sig").unlink(missing_ok=True)  # the copy is not what was signed
        write_manifest(tmp, m)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return th.to_dict()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    a = start(parser, argv, "threshold")
    if isinstance(a, int):
        return a
    try:
        th = rethreshold_bundle(a.bundle, a.fpr, a.value, a.output)
    except Dn2Error as exc:
        report_error("threshold", exc, parser)
        return EXIT_USAGE
    from .threshold import capped_warning

    warn = capped_warning(th) if a.fpr is not None else None
    if warn:
        print(f"dn2 threshold: {warn}", file=sys.stderr)
    if not a.quiet:
        print(
            f"{a.output or a.bundle}: threshold {th['value']:.6g} ({th['method']}"
            + (f", fpr {a.fpr:g}" if a.fpr is not None else "")
            + ")"
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
