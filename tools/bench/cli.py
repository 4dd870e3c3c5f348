"""dn2-bench: torch-eager vs dn2 fp32 vs dn2 int8 over the same images, stage by stage.

dn2 bench --arch resnet101 --weights none --quick --json-out bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from dn2.export.archs import ARCH_NAMES  # torch-free table
from dn2.runtime.cliargs import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    json_output_options,
    new_parser,
    parse_args,
    report_error,
    setup_logging,
    write_text,
)
from dn2.runtime.errors import Dn2Error


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "bench",
        "Benchmark the same images through three pipelines (torch-eager reference, "
        "dn2 fp32, dn2 int8) at the same thread count; stages timed separately.",
    )
    p.add_argument(
        "--arch", default="resnet101", choices=ARCH_NAMES, help="trunk (default resnet101)"
    )
    p.add_argument(
        "--weights", default="none", help="none (random, default) | imagenet | PATH to a state dict"
    )
    p.add_argument("--input-size", type=int, default=224, help="model input size S (default 224)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="16 images, one pass (a few minutes on 2 cores for resnet101)",
    )
    p.add_argument("--threads", type=int, default=2, help="threads for every pipeline (default 2)")
    p.add_argument(
        "--images", metavar="DIR", help="benchmark these images instead of generated camera frames"
    )
    p.add_argument(
        "--frame-size",
        default="1280x720",
        help="generated frame size WIDTHxHEIGHT (default 1280x720)",
    )
    p.add_argument("--bank-size", type=int, default=None, help="normal bank size (default 5000)")
    p.add_argument("--k", type=int, default=2, help="nearest neighbours (default 2)")
    p.add_argument("--n-images", type=int, default=None, help="override the image count")
    p.add_argument("--passes", type=int, default=None, help="override the number of timed passes")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 pipeline")
    p.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="also time each dn2 pipeline with the opt-in reduced-scale JPEG decode "
        "(dn2-fit --jpeg-draft)",
    )
    p.add_argument(
        "--cpu-split-rows",
        action="store_true",
        help="also time each dn2 pipeline with the other CPU batch split setting "
        "(dn2-fp32-1session / dn2-int8-1session: one session where the runtime splits "
        "batches over two sessions; -split where it does not)",
    )
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="also export efficientnet_lite0 (real weights) fp32 + int8 and measure the int8 "
        "ROC-AUC delta on Fashion-MNIST and textile (a few minutes on 2 cores)",
    )
    p.add_argument(
        "--streams-json",
        metavar="PATH",
        help="the multi-camera goal's figure: the JSON of "
        "python -m dn2.tools.bench.watch --model M --streams 4 --json PATH",
    )
    p.add_argument("--work-dir", help="keep frames and exported models here (reused next run)")
    json_output_options(p, "the full report")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except Dn2Error as exc:  # --config
        report_error("bench", exc)
        return EXIT_USAGE
    setup_logging(args.quiet, args.verbose)
    from .frames import parse_frame_size
    from .report import format_tables
    from .run import DEFAULT_BANK, run_bench

    try:
        if args.threads < 1 or args.k < 1 or min(args.batch) < 1:
            raise Dn2Error(
                "--threads, --k and --batch must be >= 1, found "
                f"{args.threads}, {args.k}, {args.batch}"
            )
        report = run_bench(
            args.arch,
            args.weights,
            input_size=args.input_size,
            threads=args.threads,
            quick=args.quick,
            images_dir=args.images,
            frame_size=parse_frame_size(args.frame_size),
            bank_size=args.bank_size or DEFAULT_BANK,
            k=args.k,
            n_images=args.n_images,
            passes=args.passes,
            batch_sizes=args.batch,
            precisions=("fp32",) if args.no_int8 else ("fp32", "int8"),
            work_dir=args.work_dir,
            jpeg_draft=args.jpeg_draft,
            cpu_split_rows=args.cpu_split_rows,
            accuracy=args.accuracy,
            streams_json=args.streams_json,
        )
        json_out = args.json_out or args.json
        # the tables go to stdout, unless stdout carries the JSON
        print(format_tables(report), file=sys.stderr if json_out == "-" else sys.stdout)
        if json_out:
            write_text(json_out, json.dumps(report, indent=2), "--json-out")
    except Dn2Error as exc:
        report_error("bench", exc, parser)
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error("bench", "interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
