"""dn2-eval: the paper's anomaly-detection protocols on a labelled dataset, offline.

Example (paper Table 2, one-class Fashion-MNIST):
  dn2 eval --dataset fashion-mnist --model lite0.onnx --protocol one-class \\
           --json-out out/fmnist.json --plots out/fmnist
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional

from dn2.runtime.cliargs import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    engine_parser,
    json_output_options,
    new_parser,
    parse_args,
    report_error,
    setup_logging,
    write_text,
)
from dn2.runtime.errors import Dn2Error
from dn2.runtime.scoring import DEFAULT_L2NORM

from .protocols import PROTOCOLS
from .run import EvalConfig, evaluate


def _floats(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, found {text!r}"
        ) from None


def _ints(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, found {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("eval", __doc__.splitlines()[0].split(": ", 1)[1], engine_parser(batch=32))
    p.add_argument(
        "--dataset",
        required=True,
        help="'fashion-mnist' (Debian package dataset-fashion-mnist) or a folder with "
        "one subfolder per class (optionally under train/ and test/)",
    )
    p.add_argument("--model", required=True, help="dn2 ONNX model (dn2-export)")
    p.add_argument("--protocol", default="one-class", choices=sorted(PROTOCOLS))
    p.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        metavar="N",
        help="random training images per class (default: all)",
    )
    p.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        metavar="N",
        help="random test images per class (default: all)",
    )
    p.add_argument(
        "--classes",
        type=_ints,
        default=None,
        metavar="I,J,..",
        help="only these class indices (default: all)",
    )
    p.add_argument("--k", type=int, default=2, help="neighbours (paper default 2)")
    p.add_argument(
        "--l2norm",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_L2NORM,
        help="L2-normalise embeddings first (default on, as dn2-fit); --no-l2norm "
        "for the paper's plain euclidean distance",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sweep",
        type=_floats,
        default=None,
        metavar="X,Y,..",
        help="values swept: few-shot n / impurity ratios / k-sweep k / kmeans C / "
        "group M (default: the paper's)",
    )
    p.add_argument(
        "--clean-fraction",
        type=float,
        default=0.5,
        help="impurity: fraction dropped by the cleaning stage (paper 0.5)",
    )
    p.add_argument(
        "--clean-k",
        type=int,
        default=None,
        help="impurity: neighbours of the cleaning score (default --k, as the paper)",
    )
    p.add_argument(
        "--model-int8",
        default=None,
        metavar="M2",
        help="protocol int8: the int8 model compared against --model",
    )
    json_output_options(p, "the results")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots here")
    p.add_argument("--markdown", default=None, metavar="OUT.md", help="also write the table")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default ~/.cache/dn2/eval)")
    p.add_argument(
        "--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS
    )  # the old spelling of -q
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except Dn2Error as exc:  # --config
        report_error("eval", exc)
        return EXIT_USAGE
    setup_logging(args.quiet, args.verbose)
    cfg = EvalConfig(
        dataset=args.dataset,
        model=args.model,
        protocol=args.protocol,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        classes=args.classes,
        k=args.k,
        l2norm=args.l2norm,
        seed=args.seed,
        model_int8=args.model_int8,
        cache_dir=args.cache_dir,
        threads=args.threads,
        batch_size=args.batch,
        providers=args.providers,
        progress=not args.quiet,
        sweep=args.sweep,
        clean_fraction=args.clean_fraction,
        clean_k=args.clean_k,
    )
    json_out = args.json_out or args.json
    try:
        out = evaluate(
            cfg, json_out=None, plots_dir=args.plots, log=logging.getLogger("dn2.eval").info
        )
        if json_out:
            write_text(json_out, json.dumps(out.doc, indent=1), "--json-out")
        if args.markdown:
            write_text(args.markdown, out.markdown, "--markdown")
    except Dn2Error as exc:
        report_error("eval", exc, parser)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:  # bad paths / parameters: a message, not a traceback
        report_error("eval", f"{type(exc).__name__}: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error("eval", "interrupted")
        return EXIT_INTERRUPTED
    # the table goes to stdout, unless stdout carries the JSON
    show = print if json_out != "-" else (lambda msg: print(msg, file=sys.stderr))
    show(out.markdown)
    show(
        f"n_train={out.doc['n_train']} n_test={out.doc['n_test']} "
        f"mean_auroc={out.doc['mean_auroc']:.4f} embedded_now={out.n_embedded} "
        f"seconds={out.doc['seconds']}"
    )
    wrote = ([json_out] if json_out and json_out != "-" else []) + (
        [f"{len(out.plots)} plot(s) in {args.plots}"] if out.plots else []
    )
    if wrote:
        show("wrote " + " and ".join(wrote))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
