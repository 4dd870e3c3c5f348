"""A tiny progress bar on stderr with items/s, for long embedding runs (no dependency).

    with Progress(len(paths), "embed") as bar:
        for ...:
            bar.update(n)
    # embed  412/1000 [########..........]  41%  37.2 img/s  ETA 0:16

On a terminal the line is redrawn in place (at most every ``interval`` s); when stderr is
not a terminal (CI logs, pipes) a plain line is printed every ``log_interval`` s instead, so
logs stay readable. ``enabled=False`` makes every call a no-op.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0) + 0.5)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    def __init__(
        self,
        total: Optional[int],
        desc: str = "",
        unit: str = "img",
        stream: Optional[TextIO] = None,
        enabled: bool = True,
        interval: float = 0.2,
        log_interval: float = 10.0,
        width: int = 20,
    ):
        self.total, self.desc, self.unit, self.width = total, desc, unit, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.n = 0
        self.start = time.perf_counter()
        self._last = -1e9
        self._closed = False

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        dt = time.perf_counter() - self.start
        return self.n / dt if dt > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(self.n / self.total, 1.0)
            fill = int(round(frac * self.width))
            parts += [
                f"{self.n}/{self.total}",
                "[" + "#" * fill + "." * (self.width - fill) + "]",
                f"{100 * frac:3.0f}%",
            ]
        else:
            parts.append(f"{self.n}")
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self._closed:
            parts.append(f"in {_clock(time.perf_counter() - self.start)}")
        elif self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        return "  ".join(parts)

    def _draw(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        if not self.enabled or self._closed:
            return
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._draw()

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        self._draw(final=True)

    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            self._draw()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
