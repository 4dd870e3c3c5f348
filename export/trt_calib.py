"""INT8 calibration data for TensorRT, in the graph's own input layout.

The pure-numpy part (``load_calibration_images``, ``calibration_batches``, ``calibration_digest``)
runs anywhere: calibration images go through exactly the runtime's preparation
(``dn2.runtime.images.read_image`` + ``prepare(img, meta.resize)``), so TensorRT calibrates on
the bytes the graph sees at run time: uint8, NHWC, BGR, [N, S, S, 3]. ``make_calibrator`` wraps
the batches in a ``tensorrt.IInt8EntropyCalibrator2`` (only on a GPU box, TensorRT 10).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple, Union

import numpy as np

from dn2.runtime.errors import Dn2Error, ImageError
from dn2.runtime.modelmeta import ResizeRule

CalibSource = Union[
    str, os.PathLike, Sequence[Union[str, os.PathLike]], np.ndarray, Sequence[np.ndarray]
]
MAX_CALIB_IMAGES = 512  # entropy calibration saturates well before this; keeps the build short


def _evenly(items: list, n: int) -> list:
    """At most n items spread evenly over the (sorted) list, deterministic."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def load_calibration_images(
    calib: CalibSource,
    rule: ResizeRule,
    max_images: int = MAX_CALIB_IMAGES,
    log: Callable[[str], Any] = print,
    what: str = "INT8 calibration",
) -> Tuple[np.ndarray, List[Tuple[str, str]]]:
    """Calibration images -> (uint8 [N, S, S, 3] NHWC BGR, [(path, problem)] skipped).

    ``calib`` may be a folder, a file, a glob or a list of them (folders are searched
    recursively), a list of BGR images of any size, or an already prepared uint8 batch.
    Unreadable files are skipped and reported; no usable image at all is a ``Dn2Error``.
    """
    from dn2.runtime.images import find_images, prepare, read_image

    s = rule.crop
    if isinstance(calib, np.ndarray):
        if (
            calib.dtype != np.uint8
            or calib.ndim != 4
            or calib.shape[1:] != (s, s, 3)
            or not len(calib)
        ):
            raise ImageError(
                f"{what} batch: expected uint8 [N, {s}, {s}, 3] (NHWC BGR), "
                f"found {calib.dtype} {tuple(calib.shape)}"
            )
        return np.ascontiguousarray(_evenly(list(calib), max_images)), []
    if isinstance(calib, (list, tuple)) and calib and all(isinstance(c, np.ndarray) for c in calib):
        imgs = _evenly(list(calib), max_images)
        return np.stack(
            [prepare(im, rule, name=f"{what} image {i}") for i, im in enumerate(imgs)]
        ), []
    inputs = (
        [os.fspath(calib)]
        if isinstance(calib, (str, os.PathLike))
        else [os.fspath(c) for c in calib]
    )
    files, problems = find_images(inputs)
    out: List[np.ndarray] = []
    for path in _evenly(files, max_images):
        try:
            out.append(prepare(read_image(path), rule, name=path))
        except ImageError as exc:
            problems.append((path, str(exc)))
    for path, why in problems:
        log(f"[dn2] {what}: skipped {path}: {why}")
    if not out:
        raise Dn2Error(
            f"{what}: expected readable images in {inputs}, found none "
            f"({len(files)} candidate files, {len(problems)} problems)"
        )
    log(
        f"[dn2] {what}: {len(out)} images prepared as uint8 NHWC BGR {s}x{s}"
        + (f" (evenly sampled from {len(files)})" if len(files) > max_images else "")
    )
    return np.stack(out), problems


def calibration_batches(images: np.ndarray, batch_size: int) -> List[np.ndarray]:
    """Full batches of ``batch_size`` (TensorRT calibrates at one fixed batch shape).

    Fewer images than one batch give a single smaller batch; a trailing partial batch is
    dropped rather than padded with repeats, which would bias the activation histograms.
    """
    n = len(images)
    if n == 0:
        raise Dn2Error("INT8 calibration: expected at least one image, found none")
    b = max(1, min(int(batch_size), n))
    return [np.ascontiguousarray(images[i : i + b]) for i in range(0, n - b + 1, b)]


def calibration_digest(images: np.ndarray) -> str:
    """sha256 of the prepared calibration bytes (part of an INT8 engine's cache key)."""
    h = hashlib.sha256(repr((images.dtype.str, images.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def make_calibrator(
    trt: Any,
    cuda: Any,
    batches: List[np.ndarray],
    cache_file: Path,
    log: Callable[[str], Any] = print,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` (device copies via ``cuda``: CudaRT)."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise Dn2Error(
            f"TensorRT {trt.__version__} has no IInt8EntropyCalibrator2 (TensorRT 11 "
            f"removed implicit INT8 calibration); build int8 with TensorRT 10.x"
        )
    nbytes = batches[0].nbytes

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.stream = cuda.stream_create()
            self.device = cuda.malloc(nbytes)

        def get_batch_size(self) -> int:  # still required by the Python binding in TRT 10
            return int(batches[0].shape[0])

        def get_batch(self, names: List[str]) -> Any:
            if self.index >= len(batches):
                return None
            batch = batches[self.index]
            try:
                cuda.h2d(self.device, batch.ctypes.data, batch.nbytes, self.stream)
                cuda.synchronize(self.stream)
            except Dn2Error as exc:  # an exception must not cross into TensorRT's C++
                log(f"[dn2] calibration: copying batch {self.index} failed: {exc}")
                return None
            self.index += 1
            log(f"[dn2] calibration batch {self.index}/{len(batches)}")
            return [self.device] * len(names)

        def read_calibration_cache(self) -> Any:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            tmp = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
            tmp.write_bytes(bytes(cache))
            os.replace(tmp, cache_file)

        def release(self) -> None:
            cuda.free(self.device)
            cuda.stream_destroy(self.stream)
            self.device, self.stream = 0, None

    return EntropyCalibrator()
