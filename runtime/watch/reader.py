"""The reader thread: source -> bounded frame queue.

* Live sources never wait for the scorer: when the queue is full the OLDEST frame is dropped
  (the newest picture is the one worth scoring) and the drop is counted.
* File-like sources never drop: the reader waits for room, so every frame (or every
  ``stride``-th) is scored.
* A failing source is reopened with a bounded exponential backoff; a failed read never produces
  a frame (no placeholder, no black frame is ever queued).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Tuple

import numpy as np

from ..errors import Dn2Error
from .sources import ItemSkipped, Source, SourceError, SourceFailure


@dataclass
class Frame:
    """One frame taken from the source."""

    index: int  # frame number in the source (counts stride-skipped frames too)
    image: np.ndarray  # BGR uint8, as decoded
    timestamp: float  # seconds: source clock (frame / fps) for files, wall clock for live
    captured: float  # time.monotonic() when the reader got it (latency starts here)
    prepared: Optional[np.ndarray] = None  # model input (S x S x 3), when a preparer is set


class FrameQueue:
    """A bounded FIFO of frames shared by one reader and one scorer thread."""

    def __init__(self, maxsize: int, ready: Optional[threading.Event] = None):
        """``ready``: an event set on every put and on close (several cameras' queues share
        one, so a single scorer can wait on all of them)."""
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, found {maxsize}")
        self.maxsize, self.ready = maxsize, ready
        self._items: Deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0  # frames thrown away because the scorer lagged (live sources only)

    def put(self, frame: Frame, drop_oldest: bool, stop: threading.Event) -> bool:
        """Queue a frame. Live: drop the oldest when full. Else wait for room (False if stopped)."""
        with self._cond:
            while len(self._items) >= self.maxsize:
                if drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                    break
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self._items.append(frame)
            self._cond.notify_all()
        if self.ready is not None:
            self.ready.set()
        return True

    def get_batch(self, max_n: int, timeout: float = 0.1) -> Optional[List[Frame]]:
        """Up to ``max_n`` frames already waiting (at least one, waiting up to ``timeout``).

        Returns [] when nothing came within the timeout, None once the queue is closed and empty.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None if self._closed else []
            n = min(max_n, len(self._items))
            out = [self._items.popleft() for _ in range(n)]
            self._cond.notify_all()
            return out

    def take(self, max_n: int) -> List[Frame]:
        """Up to ``max_n`` frames already waiting; never waits."""
        with self._cond:
            out = [self._items.popleft() for _ in range(min(max_n, len(self._items)))]
            if out:
                self._cond.notify_all()
            return out

    @property
    def finished(self) -> bool:
        """Closed, and every frame taken."""
        with self._cond:
            return self._closed and not self._items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self.ready is not None:
            self.ready.set()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass
class Backoff:
    """Bounded exponential backoff: initial, initial*factor, ... capped at max_delay.

    ``max_attempts`` consecutive failures without a good frame end the stream (None: retry
    forever, the default for live sources).
    """

    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0
    max_attempts: Optional[int] = None

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.initial * self.factor ** max(0, attempt - 1))


@dataclass
class ReaderStats:
    frames: int = 0  # frames queued
    failures: int = 0  # failed reads / opens
    reconnects: int = 0  # successful reopen after a failure
    skipped_items: int = 0  # folder images passed over after retries
    recent_problems: Deque[Tuple[str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=50)
    )
    error: Optional[str] = None  # why the stream ended, when it was not a clean end
    lost_frames: int = 0  # frames of a damaged file that could not be read (never faked)
    partial_frames: int = 0  # stream frames cut off mid-JPEG, never scored


class Reader(threading.Thread):
    """Reads ``source`` into ``queue`` until the end, ``max_frames`` or ``stop``."""

    def __init__(
        self,
        source: Source,
        queue: FrameQueue,
        stop: threading.Event,
        stride: int = 1,
        max_frames: Optional[int] = None,
        prepare: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        backoff: Optional[Backoff] = None,
        log: Callable[[str], None] = lambda msg: None,
    ):
        super().__init__(name="dn2-watch-reader", daemon=True)
        if stride < 1:
            raise Dn2Error(f"stride must be >= 1, found {stride}", param="stride")
        self.source, self.queue, self.stop = source, queue, stop
        self.stride, self.max_frames, self.prepare = stride, max_frames, prepare
        if backoff is None:
            backoff = Backoff(max_attempts=None if source.live else 3)
        self.backoff, self.log = backoff, log
        self.stats = ReaderStats()
        self.index = 0  # next source frame number

    def _frame(self, img: np.ndarray) -> Frame:
        fps = self.source.fps
        ts = self.index / fps if (fps and not self.source.live) else time.time()
        frame = Frame(index=self.index, image=img, timestamp=ts, captured=time.monotonic())
        if self.prepare is not None:
            frame.prepared = self.prepare(img)
        return frame

    def _recover(self, exc: Dn2Error, streak: int) -> bool:
        """Back off and reopen after the ``streak``-th failure in a row; False to end."""
        st = self.stats
        st.failures += 1
        limit = self.backoff.max_attempts
        if limit is not None and streak > limit:
            skipped = self.source.drop_current()
            if skipped is None:
                st.error = f"{self.source.name}: gave up after {limit} retries: {exc}"
                self.log(st.error)
                return False
            st.skipped_items += 1
            st.recent_problems.append((skipped, str(exc)))
            self.log(f"skipped {skipped} after {limit} retries: {exc}")
            self.index += 1
            return True
        delay = self.backoff.delay(streak)
        self.log(f"{exc}; reopening {self.source.name} in {delay:.2f} s (attempt {streak})")
        if self.stop.wait(delay):
            return False
        try:
            self.source.close()
            self.source.open()
        except SourceError as err:  # the next read fails and backs off further
            self.log(f"reopen failed: {err}")
            return True
        st.reconnects += 1
        return True

    def run(self) -> None:
        streak = 0
        try:
            while not self.stop.is_set():
                if self.max_frames is not None and self.stats.frames >= self.max_frames:
                    break
                keep = self.index % self.stride == 0
                try:
                    if keep:
                        img = self.source.read()
                        if img is None:
                            break
                        pos = self.source.position  # a damaged file: the frame's true number
                        if pos is not None and pos > self.index:
                            self.index = pos
                    elif not self.source.skip():
                        break
                except ItemSkipped as exc:
                    self.stats.skipped_items += 1
                    self.stats.recent_problems.append((exc.item or f"frame {self.index}", str(exc)))
                    self.log(f"skipped frame {self.index}: {exc}")
                    self.index += 1
                    continue
                except SourceFailure as exc:
                    streak += 1
                    if not self._recover(exc, streak):
                        break
                    continue
                if streak:
                    self.log(f"{self.source.name}: frames again at frame {self.index}")
                streak = 0
                if keep:
                    try:
                        frame = self._frame(img)
                    except Dn2Error as exc:  # a frame the model cannot take: report, go on
                        self.stats.recent_problems.append((f"frame {self.index}", str(exc)))
                        self.index += 1
                        continue
                    if not self.queue.put(frame, drop_oldest=self.source.live, stop=self.stop):
                        break
                    self.stats.frames += 1
                self.index += 1
        except Exception as exc:  # noqa: BLE001 - the scorer must learn why the stream ended
            self.stats.error = f"{self.source.name}: reader stopped: {type(exc).__name__}: {exc}"
            self.log(self.stats.error)
        finally:
            self.stats.lost_frames = len(self.source.lost_frames)
            self.stats.partial_frames = int(getattr(self.source, "partial_frames", 0))
            if self.stats.lost_frames:
                lost = self.source.lost_frames
                self.stats.recent_problems.append(
                    (
                        f"{self.source.name}",
                        f"{len(lost)} frames could not be read (damaged "
                        f"file; first {lost[0]}, last {lost[-1]}); the others kept their numbers",
                    )
                )
            try:
                self.source.close()
            finally:
                self.queue.close()
