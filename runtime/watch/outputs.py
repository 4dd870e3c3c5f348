"""Everything the loop emits per decision: events, snapshots, annotated video, window."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ..errors import Dn2Error
from .decide import Transition
from .events import EventWriter, Snapshots, event_record
from .overlay import VideoSink, Window, draw


class Outputs:
    def __init__(self, *, threshold: float, mode: str, source_name: str, clock: str,
                 events: Optional[str] = None, snapshots: Optional[str] = None,
                 output_video: Optional[str] = None, video_fps: float = 10.0,
                 headless: bool = True, on_quit: Callable[[], None] = lambda: None,
                 on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
                 log: Callable[[str], None] = lambda msg: None):
        self.threshold, self.mode, self.source_name, self.clock = threshold, mode, source_name, clock
        self.on_event = on_event
        self.writer = EventWriter(events)
        self.snaps = Snapshots(snapshots)
        self.video = VideoSink(output_video, video_fps) if output_video else None
        self.window = None
        if not headless:
            try:
                self.window = Window(f"dn2-watch {source_name}", on_quit)
            except Dn2Error as exc:
                log(f"{exc}; running headless")

    @property
    def draws(self) -> bool:
        return self.video is not None or self.window is not None

    def transition(self, t: Transition) -> Dict[str, Any]:
        snapshot = self.snaps.save(t)
        ev = event_record(t, self.threshold, snapshot, self.mode, self.source_name, self.clock)
        self.writer.write(ev)
        if self.on_event is not None:
            self.on_event(ev)
        return ev

    def frame(self, image, score: Optional[float], state: str, fps: float, label: str = ""):
        if not self.draws:
            return
        annotated = draw(image, score, self.threshold, state, fps, label)
        if self.video is not None:
            self.video.write(annotated)
        if self.window is not None:
            self.window.show(annotated)

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            if self.video is not None:
                self.video.close()
            if self.window is not None:
                self.window.close()
