"""The pipeline behind the model: decode, model and kNN overlapped, in input order.

    for b in overlapped(paths, load, model, tail=knn, batch=8):
        b.items, b.output, b.errors     # one batch: its good items, tail(model(...)), bad ones

* ``load(item) -> x`` (decode + resize + crop) runs in a small pool of ``workers`` threads,
  a bounded window ahead of the model (about ``ahead`` batches), so the next batch is being
  prepared while the current one is in the model. A ``load`` that raises is that item's error
  (the message of a ``Dn2Error``, else the exception named), never a stop.
* ``model(stacked) -> y`` runs on its own thread, batch after batch with no wait between.
* ``tail(y) -> z`` (kNN scoring, decisions) runs on a third thread, on batch *i* while the
  model runs batch *i + 1*; without ``tail`` the output is ``y``.

Batches come out in input order, each as soon as its tail is done (a batch never waits for
the next one, so the latency of one image is decode + model + tail, as without overlap).
``workers=0`` runs everything on the caller's thread (no threads at all). The pool's threads
run at nice ``DECODE_NICE`` (Linux; a nice value is per thread), so that a woken onnxruntime
thread should get its core back at once instead of waiting for a decode to be preempted while
the other model thread waits at the operator's barrier (inferred, not traced; the A/B is in
BENCHMARKS.md "The pipeline behind the model"); the model and tail threads keep the
caller's priority, and ``DN2_DECODE_NICE`` sets another value (``decode_nice_setting``).
While a pool runs,
OpenCV's own thread pool is set to one thread (``decode_threads``, restored after): the pool
already decodes several files at once, and OpenCV's workers on top would take the cores from
the model's onnxruntime threads mid-operator (BENCHMARKS.md "The pipeline behind the model").
An exception of ``model`` or ``tail`` is raised to the caller; leaving the loop early stops
the threads.
This is the one implementation: ``Embedder.embed_paths`` (``dn2 score`` on files, the
embedding stage of ``dn2 fit``), ``Detector.score_paths`` and the benchmark's dn2 pipelines use
it; ``dn2 watch`` has the same shape with a camera reader in place of the pool.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .errors import Dn2Error

_END = object()
DECODE_NICE = 19  # the decode pool's nice value (see the doc); DN2_DECODE_NICE overrides it


@dataclass
class Batch:
    items: List[Any]  # the items that loaded, in input order
    output: Any  # tail(model(stack of their loads)); None when no item of the batch loaded
    errors: List[Tuple[Any, str]] = field(default_factory=list)  # (item, why) before/in it
    order: List[bool] = field(default_factory=list)  # input order: True an item, False an error


_CV_LOCK = threading.Lock()
_cv_users = [0, None]  # pipelines running a decode pool, OpenCV's thread count before them


@contextmanager
def decode_threads(enabled: bool = True):
    """OpenCV's thread pool at one thread while any decode pool runs; the setting before the
    first one is put back when the last one ends (several pipelines may run at once).
    ``enabled=False`` leaves OpenCV alone (for A/B measurements)."""
    if not enabled:
        yield
        return
    import cv2

    with _CV_LOCK:
        if _cv_users[0] == 0:
            _cv_users[1] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _cv_users[0] += 1
    try:
        yield
    finally:
        with _CV_LOCK:
            _cv_users[0] -= 1
            if _cv_users[0] == 0:
                cv2.setNumThreads(_cv_users[1])


def check_nice(value, what: str):
    """``value`` as a priority setting: an int 0-19 or ``"idle"`` (None: the caller's)."""
    if value is None or value == "idle":
        return value
    text = str(value).strip()
    number = int(text) if text.isascii() and text.isdigit() else -1
    if isinstance(value, bool) or not 0 <= number <= 19:
        raise Dn2Error(f"{what}: expected a nice value 0-19 or 'idle', found {value!r}")
    return number


def decode_nice_setting():
    """The decode pool's priority: ``DN2_DECODE_NICE`` (a nice value 0-19, or ``idle``) where
    set, else ``DECODE_NICE``. 0 keeps the caller's, for a box whose other processes keep every
    core busy (there a pool at nice 19 would get little CPU and the run would slow)."""
    raw = os.environ.get("DN2_DECODE_NICE", "").strip()
    return check_nice(raw, "DN2_DECODE_NICE") if raw else DECODE_NICE


def lower_priority(nice) -> None:
    """This thread (Linux: a nice value and a policy are per thread) at a lower priority:
    ``nice`` 1-19 raises its nice value to that, ``"idle"`` makes it SCHED_IDLE; 0 or None
    leaves it. Best effort: where the OS refuses or lacks it, the thread runs as it was.
    Threads and processes this thread starts inherit the priority (OpenCV is kept at one
    thread while a decode pool runs, so it starts no pool of its own from here)."""
    if not nice:
        return
    try:
        if nice == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(int(nice), os.getpriority(os.PRIO_PROCESS, tid)))
    except (AttributeError, OSError):
        pass


def _safe(load: Callable, item) -> Tuple[Any, Optional[np.ndarray], Optional[str]]:
    try:
        return item, load(item), None
    except Dn2Error as exc:
        return item, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - cv2.error, MemoryError, ... from one file
        return item, None, f"{item}: {type(exc).__name__}: {exc}"


def prefetched(
    items: Iterable,
    load: Callable,
    workers: int,
    window: int,
    opencv_one_thread: bool = True,
    nice=None,
) -> Iterator[Tuple]:
    """``(item, x, error)`` for every item in input order, ``load`` running in ``workers``
    threads up to ``window`` items ahead (``workers=0``: in the calling thread); OpenCV at one
    thread meanwhile unless ``opencv_one_thread=False`` (see ``decode_threads``); the threads
    at priority ``nice`` (``lower_priority``; None: the caller's). Leaving early cancels the
    loads not yet started."""
    if workers == 0:
        yield from (_safe(load, it) for it in items)
        return
    it = iter(items)
    pool = ThreadPoolExecutor(
        workers, thread_name_prefix="dn2-decode", initializer=lower_priority, initargs=(nice,)
    )
    with decode_threads(opencv_one_thread):
        try:
            todo = deque(pool.submit(_safe, load, x) for x in islice(it, window + workers))
            while todo:
                res = todo.popleft().result()
                nxt = next(it, _END)
                if nxt is not _END:
                    todo.append(pool.submit(_safe, load, nxt))
                yield res
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _batches(items, load, batch, workers, ahead, size, opencv_one_thread=True, nice=None):
    """(good items, their loads, errors, order) per batch of ``batch`` good items (or items
    whose ``size`` adds up to at least ``batch``), in input order."""
    good, xs, errs, order, n = [], [], [], [], 0
    for item, x, err in prefetched(items, load, workers, ahead * batch, opencv_one_thread, nice):
        if err is not None:
            errs.append((item, err))
            order.append(False)
            continue
        good.append(item)
        xs.append(x)
        order.append(True)
        n += size(x) if size else 1
        if n >= batch:
            yield good, xs, errs, order
            good, xs, errs, order, n = [], [], [], [], 0
    if good or errs:
        yield good, xs, errs, order


def overlapped(
    items: Iterable,
    load: Callable[[Any], np.ndarray],
    model: Callable[[np.ndarray], Any],
    tail: Optional[Callable[[Any], Any]] = None,
    batch: int = 8,
    workers: int = 2,
    ahead: int = 2,
    size: Optional[Callable[[Any], int]] = None,
    collate: Callable[[List], Any] = np.stack,
    opencv_one_thread: bool = True,
    decode_nice=None,
    tail_nice=None,
) -> Iterator[Batch]:
    """See the module doc. ``size(x)``: how many model inputs one load holds (a frame cut
    into tiles), so a batch holds about ``batch`` inputs; ``collate(loads)`` makes the model's
    argument (default ``np.stack``); ``opencv_one_thread=False`` leaves OpenCV's thread pool
    as the caller set it while the decode pool runs; ``decode_nice`` / ``tail_nice``: the
    decode pool's and the tail thread's priority (see ``lower_priority``; ``decode_nice``
    None: ``decode_nice_setting()``)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, found {batch}")
    tail = tail or (lambda y: y)
    tail_nice = check_nice(tail_nice, "tail_nice")

    if workers == 0:
        for good, xs, errs, order in _batches(items, load, batch, 0, ahead, size):
            yield Batch(good, tail(model(collate(xs))) if xs else None, errs, order)
        return
    decode_nice = (
        decode_nice_setting() if decode_nice is None else check_nice(decode_nice, "decode_nice")
    )
    stop = threading.Event()
    to_tail: queue.Queue = queue.Queue(maxsize=1)  # the model runs at most 1 batch ahead
    out: queue.Queue = queue.Queue(maxsize=2)

    def put(q, v):  # a bounded put that gives up when the consumer has gone
        while not stop.is_set():
            try:
                q.put(v, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def model_stage():
        try:
            batches = _batches(
                items, load, batch, workers, ahead, size, opencv_one_thread, decode_nice
            )
            for good, xs, errs, order in batches:
                if stop.is_set():
                    return
                y = model(collate(xs)) if xs else None
                if not put(to_tail, (good, y, errs, order)):
                    return
            put(to_tail, _END)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            put(to_tail, exc)

    def tail_stage():
        lower_priority(tail_nice)
        while not stop.is_set():
            try:
                v = to_tail.get(timeout=0.1)
            except queue.Empty:
                continue
            if v is _END or isinstance(v, BaseException):
                put(out, v)
                return
            good, y, errs, order = v
            try:
                z = tail(y) if y is not None else None
            except BaseException as exc:  # noqa: BLE001
                put(out, exc)
                return
            if not put(out, Batch(good, z, errs, order)):
                return

    threads = [
        threading.Thread(target=model_stage, name="dn2-model", daemon=True),
        threading.Thread(target=tail_stage, name="dn2-tail", daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        while True:
            v = out.get()
            if v is _END:
                return
            if isinstance(v, BaseException):
                raise v
            yield v
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10.0)
