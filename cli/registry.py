"""Every ``dn2`` subcommand, one line each: name -> Command("module:function", extra, summary).

The target is imported only when its subcommand runs, so ``dn2 fit`` never imports torch and
``dn2 --help`` imports nothing. ``extra`` is the pip extra that brings the subcommand's
dependencies: when one is missing, ``dn2`` says ``pip install 'dn2[extra]'``. The function takes
``argv`` (the arguments after the subcommand) and returns the exit code (see
``dn2.runtime.cliargs.EXIT_CODES``). The ``dn2-NAME`` aliases in pyproject.toml point at the
same functions.
"""

from __future__ import annotations

from typing import NamedTuple, Optional


class Command(NamedTuple):
    target: str  # "package.module:function"
    extra: Optional[str]  # pip extra that installs its dependencies (None: the lean install)
    summary: str


# name: Command(target, extra, summary) -- one line per subcommand, in the order --help lists
COMMANDS = {
    "export": Command("dn2.export.cli:main", "export", "ImageNet trunk -> verified ONNX model"),
    "fit": Command("dn2.runtime.fit_cli:main", None, "fit a bundle from normal images"),
    "score": Command("dn2.runtime.score_cli:main", None, "score images against a bundle"),
    "watch": Command("dn2.runtime.watch.cli:main", None, "watch a camera, stream or video live"),
    "capture": Command(
        "dn2.runtime.capture_cli:main", None, "collect normal frames from the camera into a folder"
    ),
    "threshold": Command("dn2.runtime.threshold_cli:main", None, "re-threshold, no re-embedding"),
    "plot": Command("dn2.tools.plot:main", "tools", "a watch run's score over time, as a PNG"),
    "sign": Command("dn2.runtime.sign_cli:main", "sign", "sign a bundle, make keys, verify"),
    "eval": Command("dn2.tools.eval.cli:main", "tools", "the paper's evaluation protocols"),
    "bench": Command("dn2.tools.bench.cli:main", "export,tools", "speed: torch vs dn2 fp32 / int8"),
    "demo": Command("dn2.tools.demo.cli:main", "export,tools", "the offline Quick start demo"),
    "checks": Command("dn2.cli.checks:main", None, "versions, providers, video back-ends, CPU"),
}
