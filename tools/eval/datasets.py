"""Labelled image sets for dn2-eval: Fashion-MNIST (IDX files) and any labelled folder tree.

A :class:`Dataset` has class names and two :class:`Split` s (train, test). A split knows its labels
and loads one image at a time as BGR uint8 HxWx3 (grayscale becomes 3 equal channels); images are
*not* resized here — the model's own resize rule does that, like for any image, so a 28x28
Fashion-MNIST digit is upsampled by ``prepare`` exactly as a camera frame would be downsampled.

Folder trees: ``DIR/train/<class>/*`` + ``DIR/test/<class>/*``, or plain ``DIR/<class>/*`` which is
split per class into the first 80 % (sorted by path) for train and the rest for test (the split
the paper uses for WBC, section 4.1).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from dn2.runtime.errors import Dn2Error

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "DN2_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TRAIN_FRACTION = 0.8  # plain DIR/<class>/ trees: first 80 % train, last 20 % test (paper, WBC)


class DatasetError(Dn2Error):
    """A dataset is missing or malformed."""


@dataclass
class Split:
    """One split: ``labels[i]`` is the class index of item ``i``; ``load(i)`` returns BGR uint8."""

    name: str
    labels: np.ndarray
    load: Callable[[int], np.ndarray]
    ids: List[str]  # a human-readable id per item (file path, or "train[17]")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    name: str
    classes: List[str]
    train: Split
    test: Split
    fingerprint: str  # identifies the content; part of the embedding-cache key
    source: str

    def split(self, name: str) -> Split:
        if name not in ("train", "test"):
            raise DatasetError(f"split expected 'train' or 'test', found {name!r}")
        return self.train if name == "train" else self.test


def gray_to_bgr(img: np.ndarray) -> np.ndarray:
    """HxW grayscale uint8 -> HxWx3 with three equal channels (C-contiguous)."""
    return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))


# ----------------------------------------------------------------------------- Fashion-MNIST
def _open_idx(folder: Path, stem: str):
    for name in (stem + ".gz", stem):
        p = folder / name
        if p.is_file():
            return p, (gzip.open(p, "rb") if name.endswith(".gz") else open(p, "rb"))
    raise DatasetError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder}; expected the IDX files of the "
        f"Debian package: apt-get install dataset-fashion-mnist (or set ${FASHION_MNIST_ENV})"
    )


def read_idx(folder: Path, stem: str, ndim: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes with ``ndim`` dimensions (images 3, labels 1)."""
    path, fh = _open_idx(folder, stem)
    with fh:
        head = fh.read(4 + 4 * ndim)
        if len(head) < 4 + 4 * ndim:
            raise DatasetError(f"{path}: truncated IDX header")
        zero, dtype, nd = struct.unpack(">HBB", head[:4])
        if zero != 0 or dtype != 0x08 or nd != ndim:
            raise DatasetError(
                f"{path}: expected an IDX uint8 file with {ndim} dims, found "
                f"magic {head[:4].hex()} (type {dtype:#x}, {nd} dims)"
            )
        shape = struct.unpack(">" + "I" * ndim, head[4:])
        data = fh.read()
    want = int(np.prod(shape))
    if len(data) != want:
        raise DatasetError(f"{path}: header says {shape} = {want} bytes, file holds {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(folder: Optional[str] = None) -> Dataset:
    root = Path(folder or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    if not root.is_dir():
        raise DatasetError(
            f"Fashion-MNIST not found: no folder {root}. Install the Debian package "
            f"(apt-get install dataset-fashion-mnist) or point ${FASHION_MNIST_ENV} at a folder "
            f"holding train-images-idx3-ubyte.gz etc."
        )
    digest = hashlib.sha256()
    splits = {}
    for split, (img_stem, lab_stem) in _FMNIST_FILES.items():
        images = read_idx(root, img_stem, 3)
        labels = read_idx(root, lab_stem, 1).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{root}: {split} has {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DatasetError(f"{root}: {split} label {labels.max()} outside 0..9")
        digest.update(images.tobytes())
        digest.update(labels.tobytes())
        splits[split] = Split(
            split,
            labels,
            (lambda i, a=images: gray_to_bgr(a[i])),
            [f"{split}[{i}]" for i in range(len(labels))],
        )
    return Dataset(
        "fashion-mnist",
        list(FASHION_MNIST_CLASSES),
        splits["train"],
        splits["test"],
        "fashion-mnist:" + digest.hexdigest()[:32],
        str(root),
    )


# ----------------------------------------------------------------------------- folder trees
def _class_files(class_dir: Path) -> List[str]:
    from dn2.runtime.images import find_images

    files, _problems = find_images([str(class_dir)])  # unreadable files show up when loaded
    return list(files)


def _read(path: str) -> np.ndarray:
    from dn2.runtime.images import read_image

    img = read_image(path)
    return gray_to_bgr(img) if img.ndim == 2 else img


def _folder_split(name: str, classes: Sequence[str], files: List[List[str]]) -> Split:
    labels = (
        np.concatenate([np.full(len(f), c, np.int64) for c, f in enumerate(files)])
        if files
        else np.zeros(0, np.int64)
    )
    paths = [p for f in files for p in f]
    return Split(name, labels, lambda i: _read(paths[i]), paths)


def load_folder(root: str) -> Dataset:
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(
            f"dataset {root!r}: expected 'fashion-mnist' or a folder with one "
            f"subfolder per class, found no such folder"
        )
    has_split = (base / "train").is_dir() and (base / "test").is_dir()
    if has_split:
        classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
        missing = [c for c in classes if not (base / "test" / c).is_dir()]
        if missing:
            raise DatasetError(f"{root}: test/ lacks the class folders {missing} found in train/")
        train = [_class_files(base / "train" / c) for c in classes]
        test = [_class_files(base / "test" / c) for c in classes]
    else:
        classes = sorted(d.name for d in base.iterdir() if d.is_dir())
        train, test = [], []
        for c in classes:
            files = _class_files(base / c)
            cut = int(round(len(files) * TRAIN_FRACTION))
            train.append(files[:cut])
            test.append(files[cut:])
    if len(classes) < 2:
        raise DatasetError(
            f"{root}: expected at least 2 class subfolders "
            f"(or train/ and test/ holding them), found {len(classes)}"
        )
    empty = [c for c, tr, te in zip(classes, train, test) if not tr or not te]
    if empty:
        raise DatasetError(
            f"{root}: classes {empty} have no train or no test images "
            f"(a plain class folder needs at least 2 images)"
        )
    listing = []
    for f in train + test:
        for p in f:
            st = os.stat(p)
            listing.append((os.path.relpath(p, base), st.st_size, st.st_mtime_ns))
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]
    return Dataset(
        base.resolve().name,
        classes,
        _folder_split("train", classes, train),
        _folder_split("test", classes, test),
        f"folder:{base.resolve()}:{digest}",
        str(base.resolve()),
    )


def load_dataset(spec: str, fashion_dir: Optional[str] = None) -> Dataset:
    """``spec`` is ``fashion-mnist`` or a folder path."""
    if spec.lower() in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(fashion_dir)
    return load_folder(spec)


def select_per_class(
    labels: np.ndarray, n: Optional[int], seed: int = 0, classes: Optional[Sequence[int]] = None
) -> np.ndarray:
    """Sorted indices of ``n`` random items of each class (all when ``n`` is None), only of
    ``classes`` when given. Subsamples nest: with the same seed, the items picked for n are
    among those picked for any larger n, so a larger run reuses a smaller run's embeddings."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        idx = np.flatnonzero(labels == c)
        perm = rng.permutation(idx)  # drawn for every class, so class c's draw is fixed
        if classes is not None and c not in classes:
            continue
        out.append(idx if n is None else np.sort(perm[:n]))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)
