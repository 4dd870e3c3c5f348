"""The onnxruntime backend: a session over a dn2 model, its provider proven by a warm-up run.

    b = OrtBackend("model.onnx", providers="auto", threads=None, batch_size=8)
    b.provider          # the provider a real warm-up inference ran on
    b.fallbacks         # [(provider, why it was not used)]
    b.run(uint8 [N, S, S, 3]) -> {"embedding": float32 [N, D], ...}   (chunks of batch_size)

``providers``: "auto" (TensorRT > CUDA > CPU among those available), a name, or a list (see
``dn2.runtime.providers``); each is proven by a warm-up inference and the next one is tried
when it fails. The graph's signature is checked by ``dn2.runtime.contract``.

``cpu_split`` (fp32 and int8 on the CPU provider by default): a chunk of two or more images is
split over two sessions run side by side, ``threads`` shared out between them (``b.split``
sessions, ``b.split_threads`` threads each; 0: not split).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import providers as prov
from .contract import check_signature, ort_signature
from .errors import ModelError
from .modelmeta import EMBEDDING, INPUT_NAME, K_ORT_CONFIG, ModelMeta, session_props
from .paths import regular_file

log = logging.getLogger("dn2")

# onnxruntime's CPU thread pool spin-waits between runs by default. In dn2 the model shares the
# cores with decoding, resizing, the kNN and the camera reader thread, which those spinning
# workers starve. `python -m dn2.tools.bench.watch [--ort-spinning]` (efficientnet_lite0, 640x480
# frames, 2 threads, quiet machine, three alternating runs each): the watch loop kept 0.91-0.97
# of the bare pipeline's rate without spinning vs 0.84-0.94 with it, and a 10 fps camera used
# 24 % of a core instead of 81-85 %, for ~7 ms more latency (BENCHMARKS.md "Camera loop").
# A model's own dn2.ort_session_config entries override these.
CPU_SESSION_DEFAULTS = {
    "session.intra_op.allow_spinning": "0",
    "session.inter_op.allow_spinning": "0",
}


# Batches on the CPU split over two sessions side by side (on 2 cores one thread each) instead
# of one session with intra-op threads: more img/s for the same embeddings, measured with
# `python -m dn2.tools.studies.cpu_engines` and `dn2 bench --cpu-split-rows` on 2 cores
# (BENCHMARKS.md "CPU engines and onnxruntime levers"). Measured on 2 cores only, so at most
# SPLIT_SESSIONS sessions, the threads shared out between them (4 threads: 2 sessions of 2):
# each session holds its own copy of the weights, and a many-core box must not hold one copy
# per core.
SPLIT_PRECISIONS = ("fp32", "int8")
SPLIT_SESSIONS = 2


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Fallback(Exception):
    """Internal: this provider did not work; try the next one."""


def ort_config_of(meta: ModelMeta) -> Dict[str, str]:
    """onnxruntime session entries the exporter asked for (``dn2.ort_session_config``):
    int8 models need ``session.x64quantprecision=1`` on x86 CPUs without VNNI, where the
    default int8 kernels overflow (Lite0 int8 min cosine 0.96 instead of 0.99)."""
    text = meta.extra.get(K_ORT_CONFIG)
    if not text:
        return {}
    try:
        cfg = json.loads(text)
        return {str(k): str(v) for k, v in dict(cfg).items()}
    except (ValueError, TypeError) as exc:
        raise ModelError(
            f"metadata {K_ORT_CONFIG}: expected a JSON object of strings, found {text!r} ({exc})"
        ) from exc


class OrtBackend:
    """onnxruntime over a dn2 model; see the module doc."""

    def __init__(
        self,
        model_path,
        providers="auto",
        threads: Optional[int] = None,
        batch_size: int = 8,
        allow_fp16: bool = True,
        cpu_split: Optional[bool] = None,
    ):
        self.model_path = str(model_path)
        regular_file(self.model_path, "an ONNX model file", ModelError)
        if int(batch_size) < 1:
            raise ModelError(f"batch size: expected >= 1, found {batch_size}")
        if threads is not None and int(threads) < 1:
            raise ModelError(f"threads: expected >= 1 (or None for all cores), found {threads}")
        self.batch_size = int(batch_size)
        self.threads = threads
        self._ort_config: Dict[str, str] = {}
        self.fallbacks: List[Tuple[str, str]] = []  # (provider, why it was not used)
        self.session, self.meta = self._open(prov.resolve(providers), allow_fp16)
        self.provider: str = self.session.get_providers()[0]
        self._tensors = [o.graph_name for o in self.meta.outputs]
        self.split = self._split_count(cpu_split)
        n, t = self.split, (int(threads) if threads is not None else cores())
        self.split_threads = [t // n + (i < t % n) for i in range(n)] if n else []
        self._parts: list = []  # the sessions of a split, opened on first use
        self._pool: Optional[ThreadPoolExecutor] = None
        self._split_lock = threading.Lock()

    def _split_count(self, cpu_split: Optional[bool]) -> int:
        """How many sessions a batch is split over (0: none); see SPLIT_PRECISIONS."""
        if cpu_split is False or self.provider != prov.CPU:
            return 0
        if cpu_split is None and self.meta.precision not in SPLIT_PRECISIONS:
            return 0
        n = int(self.threads) if self.threads is not None else cores()
        return min(n, SPLIT_SESSIONS) if n >= 2 and self.batch_size >= 2 else 0

    def _run_split(self, tensors: List[str], chunk: np.ndarray) -> List[np.ndarray]:
        with self._split_lock:  # opened once, even when several threads call run at once
            if not self._parts:
                self._parts = [
                    self._session([prov.CPU], self.meta, False, last=True, threads=t)
                    for t in self.split_threads
                ]
                self._pool = ThreadPoolExecutor(self.split, thread_name_prefix="dn2-ort-split")
        pieces = np.array_split(chunk, min(self.split, len(chunk)))
        futures = [
            self._pool.submit(s.run, tensors, {INPUT_NAME: np.ascontiguousarray(p)})
            for s, p in zip(self._parts, pieces)
        ]
        outs = [f.result() for f in futures]
        return [np.concatenate([o[i] for o in outs]) for i in range(len(tensors))]

    def _options(self, names: Sequence[str], threads: Optional[int] = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        config = dict(self._ort_config)
        if names[0] == prov.CPU:
            so.log_severity_level = 3  # errors only; GPU attempts keep onnxruntime's warnings,
            # which say why a provider could not start (missing CUDA/cuDNN libraries, ...)
            config = {**CPU_SESSION_DEFAULTS, **config}  # the model's own entries win
        threads = self.threads if threads is None else threads
        if threads is not None:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        for key, value in config.items():
            so.add_session_config_entry(key, value)
        return so

    def _session(
        self,
        names: List[str],
        meta: Optional[ModelMeta],
        allow_fp16: bool,
        last: bool,
        threads: Optional[int] = None,
    ):
        import onnxruntime as ort

        plist = (
            prov.with_options(names, meta.input_size, meta.precision, allow_fp16, self.batch_size)
            if meta is not None
            else list(names)
        )
        try:
            return ort.InferenceSession(
                self.model_path, self._options(names, threads), providers=plist
            )
        except Exception as exc:  # onnxruntime's own exception types; the text is what matters
            if last:
                raise ModelError(
                    f"{self.model_path}: expected an ONNX model onnxruntime can "
                    f"load, found: {str(exc).strip()}"
                ) from exc
            raise _Fallback(f"session creation failed: {str(exc).strip()}") from exc

    def _warm_up(self, sess, meta: ModelMeta) -> None:
        s = meta.input_size
        x = np.zeros((1, s, s, 3), np.uint8)
        emb = meta.output(EMBEDDING)
        try:
            y = sess.run([emb.graph_name], {INPUT_NAME: x})[0]
        except Exception as exc:
            raise _Fallback(f"warm-up inference failed: {str(exc).strip()}") from exc
        if y.shape != (1, meta.dim) or not np.all(np.isfinite(y)):
            raise _Fallback(
                f"warm-up inference gave shape {y.shape} (expected (1, {meta.dim})) "
                f"or non-finite values"
            )

    def _open(self, order: List[str], allow_fp16: bool):
        meta: Optional[ModelMeta] = None
        if prov.TRT in order:  # TensorRT's options need the input size (batch profile) first
            from .modelmeta import read_model_meta

            meta = read_model_meta(self.model_path)
        reasons = []
        tries = prov.attempts(order)
        for k, names in enumerate(tries):
            want = names[0]
            try:
                sess = self._session(names, meta, allow_fp16, last=k == len(tries) - 1)
                if meta is None:
                    meta = ModelMeta.from_props(
                        session_props(sess, self.model_path), source=self.model_path
                    )
                cfg = ort_config_of(meta)
                if cfg != self._ort_config:  # the model asks for session entries: reopen
                    self._ort_config = cfg
                    sess = self._session(names, meta, allow_fp16, last=k == len(tries) - 1)
                check_signature(meta, *ort_signature(sess), self.model_path)
                got = sess.get_providers()[0]
                if got != want:  # onnxruntime dropped the provider (e.g. no GPU / CUDA libs)
                    raise _Fallback(f"onnxruntime did not enable it (session runs on {got})")
                self._warm_up(sess, meta)
                return sess, meta
            except _Fallback as exc:
                reasons.append(f"{want}: {exc}")
                self.fallbacks.append((want, str(exc)))
                nxt = names[1] if len(names) > 1 else None
                if nxt:
                    log.warning(
                        "%s: %s not used (%s); falling back to %s", self.model_path, want, exc, nxt
                    )
        raise ModelError(
            f"{self.model_path}: expected a provider that runs the model, found "
            f"none: " + "; ".join(reasons)
        )

    def run(
        self, batch: np.ndarray, outputs: Optional[Sequence[str]] = None
    ) -> Dict[str, np.ndarray]:
        """uint8 [N, S, S, 3] -> {name: array [N, ...]} for every output (or the ``outputs``
        named), in chunks of ``batch_size``."""
        specs = [o for o in self.meta.outputs if outputs is None or o.name in outputs]
        tensors = [o.graph_name for o in specs]
        parts: Dict[str, List[np.ndarray]] = {t: [] for t in tensors}
        for i in range(0, batch.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(batch[i : i + self.batch_size])
            try:
                if self.split and len(chunk) >= 2:
                    got = self._run_split(tensors, chunk)
                else:
                    got = self.session.run(tensors, {INPUT_NAME: chunk})
            except Exception as exc:
                raise ModelError(
                    f"{self.model_path}: inference on {self.provider} failed for "
                    f"a batch of {len(chunk)}: {str(exc).strip()}"
                ) from exc
            for t, y in zip(tensors, got):
                parts[t].append(y)
        joined = {
            t: (
                np.concatenate(v)
                if v
                else np.zeros((0,) + tuple(int(d) for d in s.shape[1:]), np.float32)
            )
            for (t, v), s in zip(parts.items(), specs)
        }
        return {o.name: joined[o.graph_name] for o in specs}

    def close(self) -> None:
        self.session = None
        self._parts = []
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __repr__(self) -> str:
        return (
            f"OrtBackend({self.model_path!r}, provider={self.provider}, "
            f"outputs={list(self.meta.output_names)}, batch={self.batch_size}, "
            f"split={self.split})"
        )
