"""A bounded on-disk spool in front of a network sink: scoring never waits for the network,
and an event is never lost because the sink is down.

``write(event)`` appends the event to ``DIR/<sink>/queue.jsonl`` (one unbuffered write) and
returns; a worker thread delivers the events in order, strictly one at a time, retrying the
head event with exponential backoff while the sink is down. Delivered events are marked in
``acked`` (the last delivered sequence number); when everything is delivered the queue file is
emptied. Events still waiting when the run ends stay in the folder and go first on the next run
against the same sink, so the order holds across restarts. ``max_events`` bounds the folder:
beyond it new events are refused and counted (:meth:`problems`), never silently dropped.

A *target* has ``key`` (folder name), ``name``, ``deliver(payload_dict)`` (raises when it did
not arrive), ``payload(event)`` and ``close()``.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

from ...errors import Dn2Error
from . import Sink


class SpooledSink(Sink):
    def __init__(
        self,
        target,
        root,
        max_events: int = 100_000,
        backoff_initial: float = 0.25,
        backoff_max: float = 5.0,
        drain_s: float = 5.0,
        log=lambda msg: None,
    ):
        self.target, self.name, self.log = target, target.name, log
        self.dir = Path(root) / target.key
        self.max_events, self.drain_s = int(max_events), float(drain_s)
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.delivered = self.refused = self.replayed = 0
        self.last_error: Optional[str] = None
        self._pending: Deque[Tuple[int, Dict[str, Any]]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._lock_fd = self._open_dir()
        self._acked = self._load()
        self._next = (self._pending[-1][0] if self._pending else self._acked) + 1
        self.replayed = len(self._pending)
        if self.replayed:
            log(
                f"{self.name}: {self.replayed} events from an earlier run wait in "
                f"{self.dir}; sending them first"
            )
        self._fd = os.open(self.dir / "queue.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._thread = threading.Thread(target=self._run, name=f"dn2-sink-{self.name}", daemon=True)
        self._thread.start()

    # -- files --------------------------------------------------------------------------
    def _open_dir(self) -> int:
        import fcntl

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise Dn2Error(
                f"cannot use spool folder {self.dir}: {exc.strerror or exc} "
                "(give another with spool DIR)",
                param="spool",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise Dn2Error(
                f"spool folder {self.dir} is in use by another dn2-watch sending "
                "to the same sink; give each its own spool DIR",
                param="spool",
            ) from exc
        return fd

    def _load(self) -> int:
        acked = 0
        try:
            acked = int((self.dir / "acked").read_text().strip() or 0)
        except (OSError, ValueError):
            pass
        try:
            lines = (self.dir / "queue.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                rec = json.loads(line)
                seq, ev = int(rec["seq"]), rec["event"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a kill: its event was never acknowledged
            if seq > acked:
                self._pending.append((seq, ev))
        return acked

    def _mark(self, seq: int) -> None:
        tmp = self.dir / "acked.tmp"
        tmp.write_text(str(seq))
        os.replace(tmp, self.dir / "acked")

    # -- the sink interface -------------------------------------------------------------
    def write(self, event: Dict[str, Any]) -> None:
        with self._cond:
            if len(self._pending) >= self.max_events:
                self.refused += 1
                return
            seq, self._next = self._next, self._next + 1
            try:
                os.write(self._fd, (json.dumps({"seq": seq, "event": event}) + "\n").encode())
            except OSError as exc:  # disk full: still delivered from memory if it can be
                self.last_error = f"spool write: {exc.strerror or exc}"
            self._pending.append((seq, event))
            self._cond.notify_all()

    def backlog(self) -> int:
        return len(self._pending)

    def problems(self) -> List[str]:
        if not self.refused:
            return []
        return [
            f"{self.name}: {self.refused} events refused, the spool {self.dir} held "
            f"{self.max_events} undelivered events"
        ]

    def close(self, timeout: Optional[float] = None) -> None:
        """Wait up to ``timeout`` (default ``drain_s``) for the backlog to go out, then stop;
        what is still waiting stays in the folder for the next run."""
        if self._closing.is_set():
            return
        timeout = self.drain_s if timeout is None else timeout
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._closing.set()
            self._cond.notify_all()
        self._thread.join(timeout=max(1.0, timeout))
        if self._pending:
            self.log(
                f"{self.name}: {len(self._pending)} events not delivered yet; kept in "
                f"{self.dir} for the next run"
            )
        try:
            self.target.close()
        finally:
            os.close(self._fd)
            os.close(self._lock_fd)

    # -- the worker ---------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._pending and not self._closing.is_set():
                    self._cond.wait(0.5)
                if self._closing.is_set():
                    return
                seq, ev = self._pending[0]
            try:
                self.target.deliver(self.target.payload(ev))
            except Exception as exc:  # noqa: BLE001 - any failure: keep it, retry later
                attempt += 1
                why = f"{type(exc).__name__}: {exc}"
                if attempt == 1:
                    self.log(
                        f"{self.name}: cannot deliver ({why}); spooling, retrying with backoff"
                    )
                self.last_error = why
                delay = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
                self._closing.wait(delay)
                continue
            if attempt:
                self.log(f"{self.name}: delivering again after {attempt} failed attempts")
            attempt = 0
            with self._cond:
                self._pending.popleft()
                self.delivered += 1
                try:
                    self._mark(seq)
                    if not self._pending:
                        os.ftruncate(self._fd, 0)
                except OSError as exc:
                    self.last_error = f"spool mark: {exc.strerror or exc}"
                self._cond.notify_all()
