"""dn2-plot: draw a watch run's score over time (threshold, alerts) from its --scores file.

    dn2-plot scores.csv [--events events.jsonl] -o scores.png

The same picture as the demo's (tools/demo/plot.py). The scores file is what ``dn2-watch
--scores`` wrote (CSV or JSON lines); alerts come from the events file, matched on the run id
(an events file appended to by several runs holds them all).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from dn2.runtime.cliargs import (
    EXIT_OK,
    EXIT_USAGE,
    new_parser,
    parse_args,
    prog,
    report_error,
    setup_logging,
)
from dn2.runtime.errors import Dn2Error


@dataclass
class Alert:
    start: int
    end: Optional[int]


def read_scores(path: str):
    """(run_id, frames, scores, threshold) of the first run in a scores file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise Dn2Error(f"cannot read scores file {p}: {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
        else:
            rows = [json.loads(x) for x in text.splitlines() if x.strip()]
        run = rows[0]["run_id"] if rows else None
        rows = [r for r in rows if r["run_id"] == run]
        frames = [int(r["frame"]) for r in rows]
        scores = [float(r["score"]) if r["score"] not in ("", None) else float("nan") for r in rows]
        ratios = sorted(
            float(r["score"]) / float(r["norm_score"])
            for r in rows
            if r["norm_score"] not in ("", None) and float(r["norm_score"]) > 0
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise Dn2Error(
            f"scores file {p}: expected dn2-watch --scores rows (run_id, frame, "
            f"score, norm_score, ...), found {type(exc).__name__}: {exc}"
        ) from exc
    if not frames:
        raise Dn2Error(f"scores file {p}: expected score rows, found none")
    threshold = ratios[len(ratios) // 2] if ratios else float("nan")
    return run, frames, scores, threshold


def read_alerts(path: str, run_id: Optional[str]) -> List[Alert]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise Dn2Error(f"cannot read events file {path}: {exc.strerror or exc}") from exc
    alerts, open_ = [], {}
    for n, line in enumerate(lines, 1):
        try:
            ev = json.loads(line)
            if run_id is not None and ev.get("run_id") != run_id:
                continue
            if ev["type"] == "alert_start":
                open_[ev["alert_id"]] = Alert(int(ev["frame"]), None)
                alerts.append(open_[ev["alert_id"]])
            elif ev["type"] == "alert_end" and ev["alert_id"] in open_:
                open_.pop(ev["alert_id"]).end = int(ev["frame"])
        except (ValueError, KeyError, TypeError) as exc:
            raise Dn2Error(
                f"events file {path} line {n}: expected a dn2-watch event, found "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return alerts


def main(argv: Optional[List[str]] = None) -> int:
    p = new_parser("plot", __doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("scores", help="scores file from dn2-watch --scores (.csv or JSON lines)")
    p.add_argument("--events", help="events file of the same run: alerts are drawn")
    p.add_argument("-o", "--output", default="scores.png", help="PNG to write (scores.png)")
    p.add_argument("--title", default="", help="plot title")
    try:
        a = parse_args(p, argv)
    except Dn2Error as exc:  # --config
        report_error("plot", exc)
        return EXIT_USAGE
    setup_logging(a.quiet, a.verbose)
    try:
        from dn2.tools.demo.plot import plot_scores

        run, frames, scores, thr = read_scores(a.scores)
        alerts = read_alerts(a.events, run) if a.events else []
        out = plot_scores(
            frames,
            scores,
            thr,
            [],
            alerts,
            a.output,
            title=a.title or f"dn2-watch run {run}: score per frame",
            xnote="",
        )
    except Dn2Error as exc:
        report_error("plot", exc, p)
        return EXIT_USAGE
    print(
        f"{prog('plot')}: {len(frames)} scores, {len(alerts)} alerts, threshold {thr:.4g} -> {out}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
