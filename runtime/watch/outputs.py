"""Everything the loop emits: events to every sink, snapshots, per-frame scores, the annotated
video, the window and the live status server. No output fault stops the run: the event is
written whatever happens to its snapshot, a video that cannot be written is dropped, and
:meth:`Outputs.problems` says at the end what could not be written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..errors import Dn2Error
from .decide import Transition
from .events import EventWriter, Snapshots, event_record
from .overlay import VideoSink, Window, draw


def check_new_output(path: Optional[str], flag: str, force: bool) -> None:
    """Refuse to overwrite an earlier run's output (unless ``force``), and a path that cannot
    be written, before any work is done. ``flag``: the parameter's name (``output_video``),
    which the errors carry as their ``param``."""
    if not path or path == "-":
        return
    p = Path(path)
    if p.is_file() and p.stat().st_size and not force:
        raise Dn2Error(
            f"{flag} {p} exists (from an earlier run?); pass force to overwrite "
            "it, or give a new name",
            params=(flag, "force"),
        )
    if p.is_dir():
        raise Dn2Error(f"{flag} {p}: expected a file name, found a folder", param=flag)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Dn2Error(
            f"{flag} {p}: cannot create its folder {p.parent}: {exc.strerror or exc}",
            param=flag,
        ) from exc


class Outputs:
    def __init__(
        self,
        *,
        threshold: float,
        mode: str,
        source_name: str,
        clock: str,
        events: Optional[str] = None,
        snapshots: Optional[str] = None,
        output_video: Optional[str] = None,
        video_fps: float = 10.0,
        headless: bool = True,
        on_quit: Callable[[], None] = lambda: None,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
        log: Callable[[str], None] = lambda msg: None,
        run_id: str = "",
        sinks=(),
        scores=None,
        live=None,
        camera: Optional[str] = None,
        writer: Optional[EventWriter] = None,
        live_frames: bool = True,
    ):
        """With several cameras each has its own Outputs (``camera`` names it in every
        record, snapshot and window), sharing ``writer``, ``sinks``, ``scores`` and ``live``:
        those are then closed and reported by the caller, not here."""
        self.threshold, self.mode, self.source_name, self.clock = (
            threshold,
            mode,
            source_name,
            clock,
        )
        self.on_event, self.log, self.run_id = on_event, log, run_id
        self.camera, self.own, self.live_frames = camera, writer is None, live_frames
        self.writer = writer if writer is not None else EventWriter(events)
        self.count = 0  # alert events of this Outputs (its camera's)
        self.sinks = [self.writer, *sinks]
        self.scores, self.live = scores, live
        self.snaps = Snapshots(snapshots, run_id=run_id, camera=camera)
        self.video = VideoSink(output_video, video_fps) if output_video else None
        self.video_error: Optional[str] = None
        self.window = None
        if not headless:
            try:
                self.window = Window(f"dn2-watch {camera or source_name}", on_quit)
            except Dn2Error as exc:
                log(f"{exc}; running headless")

    def set_threshold(self, threshold: float) -> None:
        self.threshold = threshold
        if self.scores is not None:
            self.scores.set_threshold(threshold)
        if self.live is not None:
            self.live.threshold = threshold

    @property
    def draws(self) -> bool:
        return self.video is not None or self.window is not None

    def transition(self, t: Transition) -> Dict[str, Any]:
        snapshot, snap_error = self.snaps.try_save(t, self.threshold)
        if snap_error:
            self.log(f"{snap_error}; the event is written without it")
        ev = event_record(
            t,
            self.threshold,
            snapshot,
            self.mode,
            self.source_name,
            self.clock,
            run_id=self.run_id,
            snapshot_error=snap_error,
            camera=self.camera,
        )
        for sink in self.sinks:
            try:
                sink.write(ev)
            except Exception as exc:  # noqa: BLE001 - one sink's bug must not stop the others
                self.log(f"{sink.name} sink: {type(exc).__name__}: {exc}")
        self.count += 1
        if self.live is not None:
            self.live.event(ev)
        if self.on_event is not None:
            self.on_event(ev)
        return ev

    def notice(self, ev: Dict[str, Any]) -> None:
        """A record that is not an alert (e.g. the drift warning) to every event sink."""
        ev = {
            "type": ev.get("type", "notice"),
            "run_id": self.run_id,
            "source": self.source_name,
            **({"camera": self.camera} if self.camera is not None else {}),
            **ev,
        }
        for sink in self.sinks:
            try:
                sink.write(ev)
            except Exception as exc:  # noqa: BLE001 - one sink's bug must not stop the others
                self.log(f"{sink.name} sink: {type(exc).__name__}: {exc}")
        if self.on_event is not None:
            self.on_event(ev)

    def score(
        self,
        frame,
        score: float,
        state: str,
        alert_id: Optional[int],
        map_peak: Optional[float] = None,
    ) -> None:
        """One score (frame or group): the scores file and the live view's history.
        ``map_peak``: the anomaly map's peak, for scorers that make maps."""
        if self.scores is not None:
            self.scores.row(
                frame.index, frame.captured, score, state, alert_id, map_peak, self.camera
            )
        if self.live is not None:
            self.live.score(frame.index, frame.captured, score, state)

    def frame(
        self, image, score: Optional[float], state: str, fps: float, label: str = "", heat=None
    ):
        """``heat``: patch bundles' {"map", "pixel_threshold", "peak", "box"} of the frame,
        drawn under the score overlay."""
        if self.live is not None and self.live_frames:
            self.live.frame(image, score, state, fps, label)
        if not self.draws:
            return
        if heat is not None and heat.get("map") is not None:
            from ..heatmap import overlay

            image = overlay(image, heat["map"], heat["pixel_threshold"], heat["peak"], heat["box"])
        annotated = draw(image, score, self.threshold, state, fps, label)
        if self.video is not None:
            try:
                self.video.write(annotated)
            except (Dn2Error, OSError) as exc:
                self.video_error = f"annotated video {self.video.path}: {exc}"
                self.log(f"{self.video_error}; going on without it")
                self.video.close()
                self.video = None
        if self.window is not None:
            self.window.show(annotated)

    def backlog(self) -> Dict[str, int]:
        return {s.name: s.backlog() for s in self.sinks[1:]}

    def problems(self) -> List[str]:
        """What could not be written (shared outputs only when this Outputs owns them)."""
        out: List[str] = []
        if self.own:
            for s in self.sinks:
                out += s.problems()
        out += self.snaps.problems()
        if self.scores is not None and self.own:
            out += self.scores.problems()
        if self.video_error:
            out.append(self.video_error)
        return out

    def close(self) -> None:
        try:
            for s in self.sinks if self.own else ():
                try:
                    s.close()
                except Exception as exc:  # noqa: BLE001
                    self.log(f"{s.name} sink: closing: {type(exc).__name__}: {exc}")
            if self.scores is not None and self.own:
                self.scores.close()
        finally:
            if self.video is not None:
                try:
                    self.video.close()
                except Exception as exc:  # noqa: BLE001
                    self.video_error = f"annotated video {self.video.path}: {exc}"
            if self.window is not None:
                self.window.close()
