"""dn2-eval: the paper's anomaly-detection protocols on a labelled dataset, offline.

Example (paper Table 2, one-class Fashion-MNIST):
  dn2-eval --dataset fashion-mnist --model lite0.onnx --protocol one-class \\
           --json out/fmnist.json --plots out/fmnist
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from dn2.runtime.errors import Dn2Error
from dn2.runtime.scoring import DEFAULT_L2NORM

from .protocols import PROTOCOLS
from .run import EvalConfig, evaluate


def _floats(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, found {text!r}")


def _ints(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dn2-eval", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True,
                   help="'fashion-mnist' (Debian package dataset-fashion-mnist) or a folder with "
                        "one subfolder per class (optionally under train/ and test/)")
    p.add_argument("--model", required=True, help="dn2 ONNX model (dn2-export)")
    p.add_argument("--protocol", default="one-class", choices=sorted(PROTOCOLS))
    p.add_argument("--train-per-class", type=int, default=None, metavar="N",
                   help="random training images per class (default: all)")
    p.add_argument("--test-per-class", type=int, default=None, metavar="N",
                   help="random test images per class (default: all)")
    p.add_argument("--classes", type=_ints, default=None, metavar="I,J,..",
                   help="only these class indices (default: all)")
    p.add_argument("--k", type=int, default=2, help="neighbours (paper default 2)")
    p.add_argument("--l2norm", action=argparse.BooleanOptionalAction, default=DEFAULT_L2NORM,
                   help="L2-normalise embeddings first (default on, as dn2-fit); --no-l2norm "
                        "for the paper's plain euclidean distance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", type=_floats, default=None, metavar="X,Y,..",
                   help="values swept: few-shot n / impurity ratios / k-sweep k / kmeans C / "
                        "group M (default: the paper's)")
    p.add_argument("--clean-fraction", type=float, default=0.5,
                   help="impurity: fraction dropped by the cleaning stage (paper 0.5)")
    p.add_argument("--clean-k", type=int, default=None,
                   help="impurity: neighbours of the cleaning score (default --k, as the paper)")
    p.add_argument("--model-int8", default=None, metavar="M2",
                   help="protocol int8: the int8 model compared against --model")
    p.add_argument("--json", required=True, metavar="OUT", help="write the JSON results here")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots here")
    p.add_argument("--markdown", default=None, metavar="OUT.md", help="also write the table")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default ~/.cache/dn2/eval)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--providers", default="auto", help="onnxruntime providers (auto, cpu, ...)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = EvalConfig(dataset=args.dataset, model=args.model, protocol=args.protocol,
                     train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                     classes=args.classes, k=args.k, l2norm=args.l2norm, seed=args.seed,
                     model_int8=args.model_int8, cache_dir=args.cache_dir, threads=args.threads,
                     batch_size=args.batch_size, providers=args.providers,
                     progress=not args.no_progress, sweep=args.sweep,
                     clean_fraction=args.clean_fraction, clean_k=args.clean_k)
    try:
        out = evaluate(cfg, json_out=args.json, plots_dir=args.plots)
    except Dn2Error as exc:
        print(f"dn2-eval: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # bad paths / parameters: a message, not a traceback
        print(f"dn2-eval: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(out.markdown)
    print(f"n_train={out.doc['n_train']} n_test={out.doc['n_test']} "
          f"mean_auroc={out.doc['mean_auroc']:.4f} embedded_now={out.n_embedded} "
          f"seconds={out.doc['seconds']}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(out.markdown)
    print(f"wrote {args.json}" + (f" and {len(out.plots)} plot(s) in {args.plots}"
                                  if out.plots else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
