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


COMMANDS = {
    "export": Command(
        "dn2.export.cli:main",
        "export",
        "export an ImageNet trunk to a verified, self-describing ONNX model",
    ),
    "fit": Command(
        "dn2.runtime.fit_cli:main", None, "fit a bundle (bank + threshold) from normal images"
    ),
    "score": Command(
        "dn2.runtime.score_cli:main", None, "score images (or one group of images) against a bundle"
    ),
    "watch": Command(
        "dn2.runtime.watch.cli:main",
        None,
        "score a camera, stream, video or folder live; debounced alerts",
    ),
    "sign": Command("dn2.runtime.sign_cli:main", "sign",
                    "sign a bundle (Ed25519), make a key pair, or verify a signature"),
    "eval": Command(
        "dn2.tools.eval.cli:main", "tools", "the paper's evaluation protocols on a labelled dataset"
    ),
    "bench": Command(
        "dn2.tools.bench.cli:main",
        "export,tools",
        "end-to-end speed: torch-eager vs dn2 fp32 vs dn2 int8",
    ),
    "demo": Command("dn2.tools.demo.cli:main", "export,tools", "the offline Quick start demo"),
    "plot": Command(
        "dn2.tools.plot_cli:main",
        "tools",
        "draw a watch run's per-frame scores, threshold and alerts",
    ),
    "checks": Command(
        "dn2.cli.checks:main",
        None,
        "report dn2, Python, numpy, onnxruntime, OpenCV, hnswlib and the CPU",
    ),
}
