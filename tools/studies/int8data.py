"""The images of the int8 study, prepared once the runtime's way (uint8 BGR, model input size).

* ``photos``: scikit-image's 16 sample photos, the exporter's default calibration and the
  gate's own rank measure;
* Fashion-MNIST one-class subsample: ``n_train`` training images of each chosen class, and a
  test set of ``n_test`` images drawn evenly from all ten classes (seeded);
* textile (PyPI ``conformal-clip-data``): ``n_train`` nominal for the bank, ``n_test`` held-out
  nominal, ``n_test // 2`` global and ``n_test // 2`` local defects (seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from dn2.runtime.images import prepare, read_image
from dn2.runtime.modelmeta import ResizeRule


@dataclass
class StudyImages:
    photos: np.ndarray
    fmnist_train: Dict[int, np.ndarray]  # class -> images
    fmnist_test: np.ndarray
    fmnist_test_labels: np.ndarray
    textile_train: np.ndarray
    textile_held: np.ndarray
    textile_global: np.ndarray
    textile_local: np.ndarray

    def all(self) -> np.ndarray:
        """Every image once, in a fixed order (for cosines)."""
        return np.concatenate(
            [self.photos, *self.fmnist_train.values(), self.fmnist_test]
            + [self.textile_train, self.textile_held, self.textile_global, self.textile_local]
        )

    def slices(self) -> Dict[str, slice]:
        """Where each part sits in ``all()``."""
        sizes = [("photos", len(self.photos))]
        sizes += [(f"fmnist_train_{c}", len(v)) for c, v in self.fmnist_train.items()]
        sizes += [
            ("fmnist_test", len(self.fmnist_test)),
            ("textile_train", len(self.textile_train)),
            ("textile_held", len(self.textile_held)),
            ("textile_global", len(self.textile_global)),
            ("textile_local", len(self.textile_local)),
        ]
        out, at = {}, 0
        for name, n in sizes:
            out[name] = slice(at, at + n)
            at += n
        return out


def _prep(images: List[np.ndarray], size: int) -> np.ndarray:
    rule = ResizeRule.for_input_size(size)
    return np.stack([prepare(im, rule) for im in images])


def _files(folder: str, n: int, rng) -> List[str]:
    files = sorted(Path(folder).glob("*.jpg"))
    return [str(files[i]) for i in rng.choice(len(files), n, replace=False)]


def load_study_images(
    size: int,
    classes: Sequence[int] = (0, 1, 2),
    n_train: int = 100,
    n_test: int = 200,
    seed: int = 0,
) -> StudyImages:
    import conformal_clip_data as ccd

    from dn2.export.samples import sample_photos
    from dn2.tools.eval.datasets import load_fashion_mnist, select_per_class

    _, photos = sample_photos(size)
    fm = load_fashion_mnist()
    train_idx = select_per_class(fm.train.labels, n_train, seed, classes)
    per_class_test = max(1, n_test // len(fm.classes))
    test_idx = select_per_class(fm.test.labels, per_class_test, seed)
    fmnist_train = {
        int(c): _prep([fm.train.load(i) for i in train_idx if fm.train.labels[i] == c], size)
        for c in classes
    }
    fmnist_test = _prep([fm.test.load(i) for i in test_idx], size)

    rng = np.random.default_rng(seed)
    nominal = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    pick = rng.permutation(len(nominal))
    train = [str(nominal[i]) for i in pick[:n_train]]
    held = [str(nominal[i]) for i in pick[n_train : n_train + n_test // 2]]
    glob_ = _files(ccd.global_dir(), n_test // 4, rng)
    local = _files(ccd.local_dir(), n_test // 4, rng)
    read = lambda paths: _prep([read_image(p) for p in paths], size)  # noqa: E731
    return StudyImages(
        photos=photos,
        fmnist_train=fmnist_train,
        fmnist_test=fmnist_test,
        fmnist_test_labels=fm.test.labels[test_idx],
        textile_train=read(train),
        textile_held=read(held),
        textile_global=read(glob_),
        textile_local=read(local),
    )
