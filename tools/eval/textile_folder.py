"""The textile set (PyPI conformal-clip-data) as a ``Folder``-layout tree of symlinks, for
``python -m dn2.tools.eval.folder``: files in sorted order, nominal ``1..train`` ->
train/good, nominal ``501..500+good`` -> test/good, local / global ``1..defects`` ->
test/local, test/global (no masks: the set ships none).

    python -m dn2.tools.eval.textile_folder OUT [--train 200] [--good 100] [--defects 100]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def build(out, train: int = 200, good: int = 100, defects: int = 100) -> Path:
    import conformal_clip_data as ccd

    root = Path(out)
    if root.exists():
        shutil.rmtree(root)
    parts = [
        ("train/good", Path(ccd.nominal_dir()), 0, train),
        ("test/good", Path(ccd.nominal_dir()), 500, good),
        ("test/local", Path(ccd.local_dir()), 0, defects),
        ("test/global", Path(ccd.global_dir()), 0, defects),
    ]
    for sub, src, start, n in parts:
        (root / sub).mkdir(parents=True)
        for f in sorted(src.glob("*.jpg"))[start : start + n]:
            (root / sub / f.name).symlink_to(f.resolve())
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.eval.textile_folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out")
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--good", type=int, default=100)
    p.add_argument("--defects", type=int, default=100)
    a = p.parse_args(argv)
    print(build(a.out, a.train, a.good, a.defects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
