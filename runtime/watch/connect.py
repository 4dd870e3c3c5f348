"""Opening a source that may not be up yet: a camera still booting, a stream not started.

A network stream (rtsp://, http:// ... URL) that cannot be opened at start is retried with the
reader's reconnect backoff (0.5 s, 1 s, 2 s ... up to ``max_delay``) until ``connect_timeout``
seconds have passed; then the last error is raised. Files, folders, camera indices and
GStreamer pipelines are opened once: a wrong path, a missing device or a pipeline that does
not parse does not get better by waiting (a stream that drops later is the reader's job).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from .sources import SourceError, open_source


def open_live(
    spec,
    *,
    connect_timeout: float = 30.0,
    max_delay: float = 10.0,
    realtime: bool = False,
    folder_fps: float = 10.0,
    log: Callable[[str], None] = lambda m: None,
    stop=None,
):
    """:func:`open_source`, retrying a stream URL until ``connect_timeout`` (seconds)."""
    from .reader import Backoff
    from .sources import Source, classify

    if isinstance(spec, Source) or realtime or classify(spec) != "url":
        return open_source(spec, realtime=realtime, folder_fps=folder_fps)
    backoff = Backoff(initial=min(0.5, max_delay), max_delay=max_delay)
    deadline = time.monotonic() + max(0.0, float(connect_timeout))
    attempt = 0
    while True:
        try:
            return open_source(spec, realtime=realtime, folder_fps=folder_fps)
        except SourceError as exc:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError(
                    f"{exc}; gave up after {attempt} attempts in "
                    f"{connect_timeout:g} s (connect_timeout)",
                    param="connect_timeout",
                ) from None
            delay = min(backoff.delay(attempt), left)
            log(
                f"{exc}; retrying in {delay:.2f} s (attempt {attempt}, up to {connect_timeout:g} s)"
            )
            if _wait(stop, delay):
                raise SourceError(f"{exc}; stopped while waiting for it") from None


def _wait(stop: Optional[object], delay: float) -> bool:
    if stop is None:
        time.sleep(delay)
        return False
    return bool(stop.wait(delay))
