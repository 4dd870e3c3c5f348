"""The demo's score-over-time plot: per-frame scores, the threshold, injected ranges, alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from dn2.runtime.errors import MissingExtraError


def plot_scores(
    frames: Sequence[int],
    scores: Sequence[float],
    threshold: float,
    defects: Sequence[Mapping],
    alerts: Sequence,
    out_png,
    fps: float = 0.0,
    title: str = "",
    found_by: Optional[Sequence[Optional[int]]] = None,
    xnote: str = "short spikes: the join between two pieces passing the camera",
) -> Path:
    """Write a PNG: the score curve, the threshold line, each injected defect range shaded
    (darker where it fills the view), and each alert as a bar from its start to its end.

    ``defects``: dicts with start/end/visible_start/visible_end; ``alerts``: objects with
    ``start``/``end`` (end None: open at the end of the video).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("matplotlib", "tools", "the demo's score plot") from None

    frames = np.asarray(frames, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n = int(frames.max()) + 1 if frames.size else 1
    # log y: normal pieces, the threshold, defects and the brief spikes of piece joins passing
    # the camera span two decades; on a linear axis the spikes flatten everything else
    floor = max(threshold, 1e-12) * 1e-2
    shown = np.clip(scores, floor, None)
    fig, ax = plt.subplots(figsize=(11, 4.6), dpi=110)
    for i, d in enumerate(defects):
        ax.axvspan(
            d.get("visible_start", d["start"]) - 0.5,
            d.get("visible_end", d["end"]) + 0.5,
            color="tab:orange",
            alpha=0.12,
            lw=0,
        )
        ax.axvspan(
            d["start"] - 0.5,
            d["end"] + 0.5,
            color="tab:orange",
            alpha=0.3,
            lw=0,
            label="injected defect in view" if i == 0 else None,
        )
    ax.plot(frames, shown, color="tab:blue", lw=1.0, label="frame score")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1.2, label=f"threshold {threshold:.4g}")
    ax.set_yscale("log")
    finite = shown[np.isfinite(shown)]
    top = max(float(finite.max()) if finite.size else threshold, threshold)
    bottom = min(float(finite.min()) if finite.size else threshold, threshold)
    bar_y = top * 1.6
    for j, a in enumerate(alerts):
        end = a.end if a.end is not None else n - 1
        ax.plot(
            [a.start - 0.5, end + 0.5],
            [bar_y, bar_y],
            color="tab:red",
            lw=6,
            solid_capstyle="butt",
            label="alert (start ▼ to end)" if j == 0 else None,
        )
        ax.plot([a.start], [bar_y * 1.45], marker="v", color="black", ms=6, ls="none")
    if found_by is not None:
        for d, hit in zip(defects, found_by):
            ax.text(
                (d["start"] + d["end"]) / 2,
                bottom / 1.25,
                "found" if hit is not None else "MISSED",
                ha="center",
                va="top",
                fontsize=8,
                color="darkgreen" if hit is not None else "darkred",
                fontweight="bold",
            )
    ax.set_ylim(bottom / 2.2, top * 3.2)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel(
        "frame" + (f"  ({fps:g} fps)" if fps else "") + (f"   —   {xnote}" if xnote else "")
    )
    ax.set_ylabel("anomaly score (log)")
    ax.set_title(title or "dn2-watch on the production line: score per frame")
    ax.grid(alpha=0.25, which="both")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=4, frameon=False)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
