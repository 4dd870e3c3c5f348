"""dn2 capture: collect normal frames from the deployed camera into a folder of PNG images.

    dn2 capture SOURCE DIR [--every N] [--max-frames N] [--seconds S] [--connect-timeout S]

SOURCE is what ``dn2 watch --source`` takes (camera index, video file, URL, GStreamer
pipeline). Every N-th frame is written losslessly as ``DIR/frame_NNNNNN.png`` (the source frame
number), so the folder is what the camera delivers, ready for ``dn2 fit MODEL DIR``. A live
source needs ``--max-frames`` or ``--seconds``. Exit 0 written; 2 usage, or a source that cannot
open (the table of every dn2 command).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from .cliargs import EXIT_OK, EXIT_USAGE, new_parser, report_error, start
from .errors import Dn2Error


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("capture", __doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("source", help="camera index, video file, stream URL or GStreamer pipeline")
    p.add_argument("folder", help="folder to write the frames into (created)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="every N-th frame")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames written")
    p.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a stream URL not up yet is retried for S seconds (default 30)",
    )
    return p


def capture(
    source,
    folder,
    every: int = 1,
    max_frames: Optional[int] = None,
    seconds: Optional[float] = None,
    connect_timeout: float = 30.0,
) -> int:
    """Write the frames; returns how many were written."""
    import cv2

    from .fit_video import check_stream_args
    from .watch.connect import open_live

    check_stream_args([str(source)], every, max_frames, seconds)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    src = open_live(str(source), connect_timeout=connect_timeout)
    t0, index, written = time.monotonic(), 0, 0
    try:
        while max_frames is None or written < max_frames:
            fps = src.fps
            clock = index / fps if (fps and not src.live) else time.monotonic() - t0
            if seconds is not None and clock >= seconds:
                break
            if index % every:
                if not src.skip():
                    break
            else:
                img = src.read()
                if img is None:
                    break
                path = out / f"frame_{index:06d}.png"
                if not cv2.imwrite(str(path), img):
                    raise Dn2Error(f"{path}: could not be written (disk full or read-only?)")
                written += 1
            index += 1
    finally:
        src.close()
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    a = start(parser, argv, "capture")
    if isinstance(a, int):
        return a
    try:
        n = capture(a.source, a.folder, a.every, a.max_frames, a.seconds, a.connect_timeout)
    except Dn2Error as exc:
        report_error("capture", exc, parser)
        return EXIT_USAGE
    print(f"{a.folder}: {n} frames written")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
