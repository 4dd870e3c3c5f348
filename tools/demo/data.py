"""The demo's real images: the simulated textile set shipped by PyPI ``conformal-clip-data``.

Three folders of 250 x 250 greyscale JPEGs: ``nominal`` (1000 normal pieces), ``global``
(500 pieces whose whole weave is off) and ``local`` (500 with a small flaw). The demo fits on a
seeded split of the nominal pieces, plays the rest on the line and injects global defects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np

from dn2.runtime.errors import Dn2Error, MissingExtraError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class TextileSet:
    root: Path
    nominal: List[str]
    global_defects: List[str]
    local_defects: List[str]


def _images(folder: Path) -> List[str]:
    if not folder.is_dir():
        raise Dn2Error(
            f"textile data: expected an image folder at {folder}, found none "
            "(reinstall conformal-clip-data: pip install --force-reinstall "
            "conformal-clip-data)"
        )
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def textile_set() -> TextileSet:
    """Locate the textile images; a clear error names the extra when the package is missing."""
    try:
        import conformal_clip_data as ccd
    except ImportError:
        raise MissingExtraError(
            "conformal-clip-data", "tools", "the demo's textile images"
        ) from None
    ts = TextileSet(
        root=Path(ccd.textile_simulated_root()),
        nominal=_images(ccd.nominal_dir()),
        global_defects=_images(ccd.global_dir()),
        local_defects=_images(ccd.local_dir()),
    )
    if len(ts.nominal) < 50 or not ts.global_defects:
        raise Dn2Error(
            f"textile data at {ts.root}: expected ~1000 nominal and ~500 global-defect "
            f"images, found {len(ts.nominal)} and {len(ts.global_defects)}"
        )
    return ts


def split_nominal(nominal: List[str], n_train: int, seed: int):
    """Seeded split: ``n_train`` images to fit on, the rest held out for the video."""
    if not 10 <= n_train <= len(nominal) - 10:
        raise Dn2Error(
            f"--train: expected 10 .. {len(nominal) - 10} fit images (the rest play "
            f"on the line), found {n_train}"
        )
    order = np.random.default_rng(seed).permutation(len(nominal))
    train = sorted(nominal[i] for i in order[:n_train])
    held = [nominal[i] for i in order[n_train:]]
    return train, held


def candidate_order(paths: List[str], seed: int) -> List[str]:
    """The defect candidates in a seeded order (screened in this order until enough pass)."""
    order = np.random.default_rng(seed + 1).permutation(len(paths))
    return [paths[i] for i in order]
