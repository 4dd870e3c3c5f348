"""The demo's verdict: which injected defects the alerts found, and which alerts were false.

An alert is the span from an ``alert_start`` event to the matching ``alert_end`` (or to the end
of the video when the stream ended inside it). An injected defect counts as **found** when an
``alert_start`` frame falls inside its range, from the first frame any of it is under the camera
(``visible_start``) to ``slack`` frames after the last frame it substantially fills the view
(``end``): the decision needs a few consecutive frames, so the alert may open a little late.
An alert is **false** when its span overlaps no defect's ``visible_start .. end + slack``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from dn2.runtime.errors import Dn2Error

DEFAULT_SLACK = 5  # frames after a range an alert may still open (min-consecutive delay + 2)


@dataclass(frozen=True)
class Alert:
    start: int
    end: Optional[int]  # None: still open when the stream ended
    peak_score: float = float("nan")


@dataclass
class Verdict:
    injected: int
    found: int
    false_alerts: int
    alerts: int
    found_by: List[Optional[int]] = field(default_factory=list)  # alert index per defect
    false_alert_frames: List[Tuple[int, Optional[int]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.found == self.injected and self.false_alerts == 0

    def line(self) -> str:
        return (
            f"VERDICT: found {self.found}/{self.injected} injected defects, "
            f"{self.false_alerts} false alerts"
        )


def alerts_from_events(events: Iterable[Mapping]) -> List[Alert]:
    """Pair ``alert_start`` / ``alert_end`` events (in order) into alerts; other types ignored."""
    alerts: List[Alert] = []
    open_start: Optional[Mapping] = None
    for ev in events:
        kind = ev.get("type")
        if kind == "alert_start":
            if open_start is not None:  # a start without an end: close it where the next opens
                alerts.append(
                    Alert(
                        int(open_start["frame"]),
                        int(ev["frame"]) - 1,
                        float(open_start.get("peak_score", open_start.get("score", "nan"))),
                    )
                )
            open_start = ev
        elif kind == "alert_end" and open_start is not None:
            peak = ev.get(
                "peak_score", open_start.get("peak_score", open_start.get("score", "nan"))
            )
            alerts.append(Alert(int(open_start["frame"]), int(ev["frame"]), float(peak)))
            open_start = None
    if open_start is not None:
        alerts.append(
            Alert(
                int(open_start["frame"]),
                None,
                float(open_start.get("peak_score", open_start.get("score", "nan"))),
            )
        )
    return alerts


def read_events(path) -> List[dict]:
    """Read a JSON-lines events file; a bad line is an error naming the line."""
    out = []
    path = Path(path)
    if not path.exists():
        raise Dn2Error(
            f"events file {path} does not exist; expected the JSON lines dn2-watch writes"
        )
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise Dn2Error(
                f"{path}:{no}: expected one JSON object per line, found {line[:80]!r} ({exc})"
            ) from None
    return out


def judge(
    defects: Sequence[Mapping],
    alerts: Sequence[Alert],
    slack: int = DEFAULT_SLACK,
    n_frames: Optional[int] = None,
) -> Verdict:
    """Match alerts to injected defect ranges (``start``, ``end``, ``visible_start``).

    ``n_frames`` closes an alert still open at the end (its span runs to the last frame).
    """
    windows = [(int(d.get("visible_start", d["start"])), int(d["end"]) + slack) for d in defects]
    found_by: List[Optional[int]] = []
    for lo, hi in windows:
        hit = next((i for i, a in enumerate(alerts) if lo <= a.start <= hi), None)
        found_by.append(hit)
    false_alerts = []
    last = (n_frames - 1) if n_frames else None
    for a in alerts:
        end = a.end if a.end is not None else (last if last is not None else a.start)
        if not any(a.start <= hi and end >= lo for lo, hi in windows):
            false_alerts.append((a.start, a.end))
    return Verdict(
        injected=len(defects),
        found=sum(h is not None for h in found_by),
        false_alerts=len(false_alerts),
        alerts=len(alerts),
        found_by=found_by,
        false_alert_frames=false_alerts,
    )


def report(res: dict) -> str:
    """The demo's closing lines: where each output is, the timings, the verdict line."""
    o = {k: Path(v) for k, v in res["outputs"].items()}
    snaps = sorted(o["snapshots"].glob("*.jpg")) if o["snapshots"].is_dir() else []
    snaps = [p for p in snaps if not p.stem.endswith("_annotated")]
    lines = [f"dn2 demo outputs in {o['model'].parent}:"]
    for key, what in [
        ("video", "production line video (input)"),
        ("truth", "ground truth: injected defect frame ranges"),
        ("events", "alert events (JSON lines)"),
        ("snapshots", f"peak-frame snapshots ({len(snaps)}, each with an _annotated copy)"),
        ("annotated", "annotated video (score bar, raw and normalised score, state)"),
        ("scores", "score per frame"),
        ("plot", "score-over-time plot"),
        ("bundle", "fitted bundle"),
        ("model", "ONNX model"),
        ("model_report", "export report (verification, timings)"),
        ("summary", "this run as JSON"),
    ]:
        lines.append(f"  {what:<47} {o[key]}")
    t = res["timings_s"]
    lines.append("timings: " + ", ".join(f"{k.split(':')[0]} {v:.1f} s" for k, v in t.items()))
    v = res["verdict"]
    lines.append(
        f"{v['alerts']} alerts for {v['injected']} injected defects "
        f"(threshold {res['threshold']:.4g})"
    )
    lines.append(v["line"])
    return "\n".join(lines)
