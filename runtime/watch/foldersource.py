"""A folder of images played as a frame source (``dn2 watch --source FOLDER``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from .sources import IMAGE_SUFFIXES, ItemSkipped, Source, SourceError, SourceFailure


class FolderSource(Source):
    """The images of a folder, sorted by name, played as a stream (file-like: never drops).

    ``fps`` sets the source clock used for timestamps (frame / fps). An image that cannot be
    read raises :class:`SourceFailure`, so the reader retries it with backoff (a file being
    rewritten or briefly moved away); if it stays bad, the reader calls :meth:`drop_current`,
    reports the file and goes on with the next one.
    """

    def __init__(self, folder: Union[str, Path], fps: float = 10.0):
        self.folder = Path(folder)
        self.name = str(folder)
        self.live = False
        self._fps = float(fps)
        self._files: List[Path] = []
        self._pos = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"folder {self.name!r} does not exist")
        if not self._files:
            self._files = sorted(
                p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )  # each one is
            # read (or reported) in turn: a FIFO or folder named .jpg is a skipped frame
            if not self._files:
                raise SourceError(
                    f"folder {self.name!r} holds no images "
                    f"(expected files ending in {', '.join(IMAGE_SUFFIXES)})"
                )

    def read(self) -> Optional[np.ndarray]:
        from ..errors import ImageError
        from ..images import read_image

        if self._pos >= len(self._files):
            return None
        path = self._files[self._pos]
        try:  # the same guarded reader as dn2-score / dn2-fit (bombs, FIFOs, sizes, EXIF)
            img = read_image(path)
        except ImageError as exc:
            if not os.path.lexists(path):  # moved away for a moment: retry with backoff
                raise SourceFailure(str(exc)) from None
            self._pos += 1  # the file is there and bad: report it once and go on
            raise ItemSkipped(str(exc), item=str(path)) from None
        self._pos += 1
        return img

    def skip(self) -> bool:
        if self._pos >= len(self._files):
            return False
        self._pos += 1
        return True

    def drop_current(self) -> Optional[str]:
        """Pass over the image that keeps failing; returns its path (None at the end)."""
        if self._pos >= len(self._files):
            return None
        self._pos += 1
        return str(self._files[self._pos - 1])

    def close(self) -> None:
        pass

    @property
    def fps(self) -> Optional[float]:
        return self._fps
