"""Fashion-MNIST one-class, global vs patch vs both, on a seeded subsample (state it).

Per class c: ``--train`` training images of c are normal; the test set is ``--test`` test
images of c (normal) and ``--test`` test images of the other classes (anomalous), written as PNG
into the ``Folder`` layout and run through ``dn2.tools.eval.folder`` with ``--mode both``; the
same run gives the global signal's, the patch signal's and the decision's ROC-AUC, and
(``dn2.tools.studies.combine_rules``) every combination rule's, refitted on the bundle's held-out
normal score pairs.

    python -m dn2.tools.bench.fmnist_modes --model M.onnx [--classes 0 1 ...] [--train 100]
        [--test 100] [--view full] [--patch-topk T] [--json OUT] [--keep DIR]

``--keep DIR`` keeps each class's bundle (``DIR/class_C``) and raw test scores
(``DIR/class_C.json``), the inputs of ``combine_rules``, so rules can be re-scored without
re-embedding.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np


def _write(root: Path, ds, c: int, n_train: int, n_test: int, rng) -> None:
    tr = np.flatnonzero(ds.train.labels == c)
    te_in = np.flatnonzero(ds.test.labels == c)
    te_out = np.flatnonzero(ds.test.labels != c)
    for d, split, idx in (
        ("train/good", ds.train, rng.choice(tr, n_train, replace=False)),
        ("test/good", ds.test, rng.choice(te_in, n_test, replace=False)),
        ("test/other", ds.test, rng.choice(te_out, n_test, replace=False)),
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
        for i in idx:
            cv2.imwrite(str(root / d / f"{split.name}_{int(i):05d}.png"), split.load(int(i)))


row_sigs = ("global", "patch")


def main(argv=None) -> int:
    from dn2.tools.eval.datasets import load_fashion_mnist
    from dn2.tools.eval.folder import evaluate_folder
    from dn2.tools.studies.combine_rules import rules_table

    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.bench.fmnist_modes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--train", type=int, default=100)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--view", default="full")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch-topk", type=int, default=None, help="the fit's (default 10)")
    p.add_argument("--json")
    p.add_argument("--keep", metavar="DIR", help="keep each class's bundle and raw scores here")
    a = p.parse_args(argv)
    ds = load_fashion_mnist()
    rng = np.random.default_rng(a.seed)
    out = {"train_per_class": a.train, "test_per_class": 2 * a.test, "view": a.view, "classes": {}}
    for c in a.classes:
        with tempfile.TemporaryDirectory(prefix="dn2-fm-") as tmp:
            _write(Path(tmp), ds, c, a.train, a.test, rng)
            bundle = str(Path(a.keep) / f"class_{c}" if a.keep else Path(tmp) / "bundle")
            r = evaluate_folder(
                tmp,
                a.model,
                bundle=bundle,
                mode="both",
                view=a.view,
                threads=a.threads,
                fit_kwargs={"topk": a.patch_topk} if a.patch_topk else None,
                log=lambda m: None,
            )
            rules = rules_table(bundle, r["results"])["rules"]
            if a.keep:
                kept = {"results": r["results"], "class": c}
                (Path(a.keep) / f"class_{c}.json").write_text(json.dumps(kept))
        row = {
            "both": r["image_auroc"]["other"],
            **{sig: v["other"] for sig, v in r["image_auroc_by_signal"].items()},
            **{f"rule_{k}": v["auroc_other"] for k, v in rules.items() if k not in row_sigs},
        }
        out["classes"][str(c)] = row
        print(
            f"class {c}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()),
            file=sys.stderr,
            flush=True,
        )
    keys = next(iter(out["classes"].values())).keys()
    out["mean"] = {k: float(np.mean([v[k] for v in out["classes"].values()])) for k in keys}
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
