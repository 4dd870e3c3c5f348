"""Drift warning: this camera's frames do not look like the normal set.

A bank fitted on other pictures than the camera delivers (stills instead of the camera's
frames, another colour path, another framing) scores every frame high, and the watch turns
that into one endless alert. The check compares the median score of the first ``FIRST``
frame scores, and later of every ``WINDOW`` scores, with the bundle's normal calibration
median (manifest ``threshold.quantiles``): when the window's median is above the threshold
(more than half of the frames flagged) and ``RATIO`` x the normal median, ``watch`` says once,
plainly, what it sees and how to refit from this camera, and records it as a ``drift`` event
and in the run summary.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

FIRST = 30
WINDOW = 300
RATIO = 2.0


class DriftCheck:
    def __init__(
        self,
        threshold: float,
        normal_median: Optional[float],
        source: str,
        first: int = FIRST,
        window: int = WINDOW,
    ):
        self.threshold, self.normal_median, self.source = float(threshold), normal_median, source
        self.first, self.window = int(first), int(window)
        self.scores: List[float] = []
        self.said: Optional[Dict[str, Any]] = None

    def add(self, score: float, frame: int) -> Optional[Dict[str, Any]]:
        """Feed one score; returns the drift record the first time drift is seen, else None."""
        if self.said is not None or not np.isfinite(score):
            return None
        self.scores.append(float(score))
        n = len(self.scores)
        if n == self.first:
            win = self.scores
        elif n > self.first and (n - self.first) % self.window == 0:
            win = self.scores[-self.window :]
        else:
            return None
        if n > self.window + self.first:
            del self.scores[: -self.window]
        med = float(np.median(win))
        ref = self.normal_median if self.normal_median and self.normal_median > 0 else None
        if med <= self.threshold or (ref is not None and med <= RATIO * ref):
            return None
        msg = (
            f"DRIFT: this camera's frames do not look like the normal set: the median score "
            f"of {len(win)} frames up to frame {frame} is {med:.4g}, "
            f"{med / self.threshold:.2f}x the threshold"
            + (f" and {med / ref:.1f}x the normal images' median" if ref else "")
            + ". Refit from this camera: dn2 fit MODEL "
            + _quote(self.source)
            + " --seconds 60 --output BUNDLE (or dn2 watch MODEL --source "
            + _quote(self.source)
            + " --learn 60)"
        )
        self.said = {
            "type": "drift",
            "frame": int(frame),
            "frames": len(win),
            "median_score": med,
            "median_norm_score": med / self.threshold,
            "normal_median": ref,
            "threshold": self.threshold,
            "message": msg,
        }
        return self.said


def _quote(s: str) -> str:
    s = str(s)
    return f'"{s}"' if any(c in s for c in " !'") else s
