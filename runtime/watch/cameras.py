"""Several sources in one watch: the list of sources, their camera ids, per-camera file names.

* ``--source`` may be given several times, and a source that is a ``.streams`` file (as in
  Ultralytics) is a list of sources, one per line: video files, camera indices, URLs,
  GStreamer pipelines, folders; blank lines and lines starting with ``#`` are skipped.
* Each camera has an id: the one given (``--camera-id``, once per source, in order), else a
  name made from its source (a file's stem, ``cam0`` for camera 0, a URL's host and path),
  made unique with ``-2``, ``-3`` ...; ids hold only ``A-Za-z0-9_.-``, so they are safe in
  MQTT topics, file names, CSV cells and Prometheus labels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..errors import ConfigError, Dn2Error

STREAMS_SUFFIX = ".streams"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_id(text: str) -> str:
    """``text`` with anything but ``A-Za-z0-9_.-`` turned into ``_`` (at most 64 chars)."""
    return _UNSAFE.sub("_", str(text)).strip("_")[-64:] or "camera"


def expand_sources(source) -> List:
    """The sources of a watch, in order: one source, a list of them, and every ``.streams``
    file read as one source per line."""
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise ConfigError("source: expected at least one source, found none", param="source")
    out: List = []
    for s in items:
        if isinstance(s, (str, Path)) and str(s).lower().endswith(STREAMS_SUFFIX):
            out += read_streams(s)
        else:
            out.append(s)
    return out


def read_streams(path: Union[str, Path]) -> List[str]:
    """A ``.streams`` file: one source per line (``#`` comments and blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise Dn2Error(
            f"source {path}: cannot read this sources file: {exc.strerror or exc}",
            param="source",
        ) from None
    lines = [ln.strip() for ln in text.splitlines()]
    found = [ln for ln in lines if ln and not ln.startswith("#")]
    if not found:
        raise Dn2Error(
            f"source {path}: expected one source per line (video file, camera index, "
            "URL or GStreamer pipeline), found no source in it"
        )
    return found


def _name(source) -> str:
    s = getattr(source, "name", None) if not isinstance(source, (str, int, Path)) else source
    s = str(s if s is not None else "camera")
    if s.isdigit():
        return f"cam{s}"
    if re.match(r"^[a-z]+://", s, re.IGNORECASE):
        return safe_id(re.sub(r"^[a-z]+://([^@/]*@)?", "", s, flags=re.IGNORECASE))
    if " ! " in s:  # a GStreamer pipeline: its first element
        return safe_id(s.split(" ! ", 1)[0].split()[0])
    return safe_id(Path(s).stem or s)


def camera_ids(sources: Sequence, given: Optional[Sequence[str]] = None) -> List[str]:
    """One unique, file- and topic-safe id per source."""
    if given is not None and len(given) != len(sources):
        raise ConfigError(
            f"camera_id: expected one id per source ({len(sources)}), found {len(given)}",
            param="camera_id",
        )
    names = [safe_id(g) for g in given] if given is not None else [_name(s) for s in sources]
    out: List[str] = []
    for n in names:
        cand, i = n, 2
        while cand in out:
            cand, i = f"{n}-{i}", i + 1
        out.append(cand)
    return out


def per_camera_path(path: Optional[str], camera: str) -> Optional[str]:
    """``out.mp4`` -> ``out_<camera>.mp4`` (each camera writes its own annotated video)."""
    if not path:
        return None
    p = Path(path)
    return str(p.with_name(f"{p.stem}_{camera}{p.suffix}"))
