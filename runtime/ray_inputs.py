"""Inputs and command-line options of the ``--ray`` paths (no Ray import here).

* ``@LIST``: a text file naming one input per line (file, folder or glob; blank lines and
  ``#`` comments skipped), relative paths taken from the list's own folder.
* video files (``VIDEO_EXTENSIONS``) are read frame by frame in segments (``ray_video``).
"""

from __future__ import annotations

import argparse
import os
from typing import List, Sequence, Tuple

from .errors import Dn2Error
from .fit_video import VIDEO_SUFFIXES

VIDEO_EXTENSIONS = frozenset(VIDEO_SUFFIXES)  # the video files a local fit reads


def expand_inputs(inputs) -> List[str]:
    """Inputs with every ``@LIST`` replaced by the lines of that list file."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: List[str] = []
    for item in inputs:
        item = os.fspath(item)
        if not item.startswith("@"):
            out.append(item)
            continue
        path = item[1:]
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise Dn2Error(
                f"{item}: expected a readable list file (one path per line), found: {exc}"
            ) from exc
        base = os.path.dirname(os.path.abspath(path))
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line if os.path.isabs(line) else os.path.join(base, line))
    return out


def split_videos(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(video files named explicitly, the other inputs)."""
    videos, rest = [], []
    for item in inputs:
        is_video = os.path.splitext(item)[1].lower() in VIDEO_EXTENSIONS and os.path.isfile(item)
        (videos if is_video else rest).append(item)
    return videos, rest


# the Ray functions' parameter names whose options are spelt --ray-NAME (for errors)
RAY_PARAMS = {"gpus": "ray_gpus", "workers": "ray_workers", "fmt": "ray_format"}


def add_ray_args(p: argparse.ArgumentParser, score: bool = False) -> None:
    """``--ray [ADDRESS]`` and the pool options, for dn2 fit and dn2 score."""
    g = p.add_argument_group("Ray (pip install 'dn2[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run the embedding on a Ray cluster: no ADDRESS starts a local one, "
        "'auto' joins the running cluster (ray start), host:port or "
        "ray://host:10001 a given one; files must be readable by the workers "
        "at the same paths. Put it after the inputs or write --ray=ADDRESS",
    )
    g.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="actors, one onnxruntime session each (default: cluster CPUs / --threads)",
    )
    g.add_argument(
        "--ray-gpus",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs per actor (e.g. 1, or 0.5 to share one; default 0: CPU actors; "
        "use with --providers cuda,cpu)",
    )
    g.add_argument(
        "--ray-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPUs of the local cluster that --ray without ADDRESS starts (default: all)",
    )
    if score:
        g.add_argument(
            "--ray-output",
            default=None,
            metavar="DIR",
            help="folder for the result shards (required with --ray)",
        )
        g.add_argument(
            "--ray-format",
            choices=("parquet", "jsonl"),
            default="parquet",
            help="shard format: Parquet (default) or JSON lines",
        )
        g.add_argument(
            "--every",
            "--video-stride",
            dest="every",
            type=int,
            default=1,
            metavar="N",
            help="videos: score every N-th frame (default 1), as dn2 fit --every",
        )
        g.add_argument(
            "--max-frames",
            type=int,
            default=None,
            metavar="N",
            help="videos: the first N of those frames of each video",
        )
        g.add_argument(
            "--seconds",
            type=float,
            default=None,
            metavar="S",
            help="videos: the frames of the first S seconds of each (the file's clock)",
        )
    else:
        g.add_argument(
            "--ray-shards",
            default=None,
            metavar="DIR",
            help="keep the embedding shards (.npy + index.json) in DIR "
            "(default: a temporary folder, removed after the fit)",
        )


def ray_address(value):
    """The CLI's ``--ray`` value as ``connect`` takes it (None: start a local cluster)."""
    return None if value == "local" else value
