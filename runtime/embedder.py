"""An onnxruntime session over a dn2 model: images in, pooled embeddings out.

    emb = Embedder("model.onnx", providers="auto", threads=None, batch_size=8)
    emb.provider                  # the provider a real warm-up inference ran on
    emb.embed_batch(uint8 [N, S, S, 3]) -> float32 [N, D]
    emb.embed_images([bgr, ...])  -> float32 [N, D]   (any sizes; resized by the model's rule)
    emb.embed_paths(paths)        -> EmbedResult(embeddings [M, D], paths (M, in input order),
                                                 errors [(path, message)])

The model's own metadata (``dn2.*`` metadata_props) gives the resize rule and the embedding
size; the graph's input/output names, dtypes and shapes are checked against the dn2 contract
(``dn2.runtime.modelmeta``) and a mismatch is a ``ModelError`` naming expected and found.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import providers as prov
from .errors import Dn2Error, ImageError, ModelError
from .color import to_gray3
from .images import draft_side_for, prepare, read_image
from .modelmeta import (INPUT_NAME, K_ORT_CONFIG, OUTPUT_NAME, PATCHES_NAME, ModelMeta, patch_spec,
                        session_props)
from .paths import regular_file
from .progress import Progress

log = logging.getLogger("dn2")

# onnxruntime's CPU thread pool spin-waits between runs by default. In dn2 the model shares the
# cores with decoding, resizing, the kNN and the camera reader thread, which those spinning
# workers starve. `python -m dn2.tools.bench.watch [--ort-spinning]` (efficientnet_lite0, 640x480
# frames, 2 threads, quiet machine, three alternating runs each): the watch loop kept 0.91-0.97
# of the bare pipeline's rate without spinning vs 0.84-0.94 with it, and a 10 fps camera used
# 24 % of a core instead of 81-85 %, for ~7 ms more latency (BENCHMARKS.md "Camera loop").
# A model's own dn2.ort_session_config entries override these.
CPU_SESSION_DEFAULTS = {"session.intra_op.allow_spinning": "0",
                        "session.inter_op.allow_spinning": "0"}


class EmbedResult(NamedTuple):
    embeddings: np.ndarray  # float32 [M, D], row i belongs to paths[i]
    paths: List[str]  # the files that were embedded, in input order
    errors: List[Tuple[str, str]]  # (path, message) for every file that was not


def _dim(d) -> Optional[int]:
    return d if isinstance(d, int) and d > 0 else None


def check_graph(sess, meta: ModelMeta, source: str) -> None:
    """The session's signature must be the dn2 contract with the metadata's sizes."""
    ins, outs = sess.get_inputs(), sess.get_outputs()
    s, d = meta.input_size, meta.dim
    pspec = patch_spec(meta, source)
    want = [OUTPUT_NAME, PATCHES_NAME] if pspec else [OUTPUT_NAME]
    if [i.name for i in ins] != [INPUT_NAME] or [o.name for o in outs] != want:
        outputs = (f"outputs {want} (metadata describes patches)" if pspec
                   else f"one output {OUTPUT_NAME!r}")
        raise ModelError(f"{source}: expected one input {INPUT_NAME!r} and {outputs}, found "
                         f"inputs {[i.name for i in ins]} and outputs {[o.name for o in outs]}")
    if pspec:
        pshape = list(outs[1].shape)
        c, (gh, gw) = pspec["channels"], pspec["grid"]
        if len(pshape) != 4 or [_dim(x) for x in pshape[1:]] != [c, gh, gw]:
            raise ModelError(f"{source}: output {PATCHES_NAME!r} expected shape [N, {c}, {gh}, "
                             f"{gw}] (metadata), found {pshape}")
    i, o = ins[0], outs[0]
    if i.type != "tensor(uint8)":
        raise ModelError(f"{source}: input {INPUT_NAME!r} expected tensor(uint8), found {i.type}")
    shape = list(i.shape)
    if len(shape) != 4 or [_dim(x) for x in shape[1:]] != [s, s, 3] or _dim(shape[0]):
        raise ModelError(f"{source}: input {INPUT_NAME!r} expected shape [N, {s}, {s}, 3] with "
                         f"dynamic N (metadata input size {s}), found {shape}")
    if o.type != "tensor(float)":
        raise ModelError(f"{source}: output {OUTPUT_NAME!r} expected tensor(float), found {o.type}")
    oshape = list(o.shape)
    if len(oshape) != 2 or _dim(oshape[1]) != d:
        raise ModelError(f"{source}: output {OUTPUT_NAME!r} expected shape [N, {d}] "
                         f"(metadata embedding dim {d}), found {oshape}")


class Embedder:
    """onnxruntime over a dn2 model; see the module doc.

    ``providers``: "auto" (TensorRT > CUDA > CPU among those available), a name, or a list
    (see ``dn2.runtime.providers``). ``threads``: onnxruntime intra-op threads (None: its
    default, all cores). ``decode_workers``: threads decoding and resizing files in
    ``embed_paths`` while the model runs (None: 2; 0: decode in the calling thread). Measured
    with ``python -m dn2.tools.bench.embed lite0.onnx --threads 2`` on the 2-core dev VM, 32
    1280x720 JPEGs, Lite0 on the CPU: 12.8 img/s with 0 workers, 15.5 with 1, 15.7 with 2 (decode
    + resize alone 14.7 ms/img, the model 32.2 ms/img); on a GPU box the model is faster than
    decoding and the workers matter more.
    ``allow_fp16``: let TensorRT use FP16 kernels for an FP32 model.
    ``jpeg_draft``: ``embed_paths`` decodes large JPEGs at reduced scale
    (``dn2.runtime.images.read_image(draft_side=...)``); fit and score must agree on it, which is
    why a bundle records it (manifest ``score.jpeg_draft``).
    ``gray``: every batch is converted BGR -> gray -> BGR before the model (a bank fitted on
    gray images, manifest ``score.color``; ``dn2.runtime.color``).
    """

    def __init__(self, model_path, providers="auto", threads: Optional[int] = None,
                 batch_size: int = 8, decode_workers: Optional[int] = None,
                 allow_fp16: bool = True, jpeg_draft: bool = False, gray: bool = False):
        self.model_path = str(model_path)
        regular_file(self.model_path, "an ONNX model file", ModelError)
        if int(batch_size) < 1:
            raise ModelError(f"batch size: expected >= 1, found {batch_size}")
        if threads is not None and int(threads) < 1:
            raise ModelError(f"threads: expected >= 1 (or None for all cores), found {threads}")
        self.batch_size = int(batch_size)
        self.threads = threads
        self.decode_workers = 2 if decode_workers is None else max(0, int(decode_workers))
        order = prov.resolve(providers)
        self._ort_config: Dict[str, str] = {}
        self.fallbacks: List[Tuple[str, str]] = []  # (provider, why it was not used)
        self.session, self.meta = self._open(order, allow_fp16)
        self.provider: str = self.session.get_providers()[0]
        self.dim: int = self.meta.dim
        self.input_size: int = self.meta.input_size
        self.rule = self.meta.resize
        # the ``patches`` output's description (layers, stride, channels, grid), or None
        self.patch_spec: Optional[Dict] = patch_spec(self.meta, self.model_path)
        # the shorter side a draft-decoded JPEG keeps (None: full-size decode), once, not per file
        self.draft_side: Optional[int] = draft_side_for(self.rule) if jpeg_draft else None
        # a bank of gray images scores every input as gray (dn2.runtime.color)
        self.gray = bool(gray)

    @property
    def jpeg_draft(self) -> bool:
        return self.draft_side is not None

    # -- session -------------------------------------------------------------------------
    def _options(self, names: Sequence[str]):
        import onnxruntime as ort

        so = ort.SessionOptions()
        config = dict(self._ort_config)
        if names[0] == prov.CPU:
            so.log_severity_level = 3  # errors only; GPU attempts keep onnxruntime's warnings,
            # which say why a provider could not start (missing CUDA/cuDNN libraries, ...)
            config = {**CPU_SESSION_DEFAULTS, **config}  # the model's own entries win
        if self.threads is not None:
            so.intra_op_num_threads = int(self.threads)
            so.inter_op_num_threads = 1
        for key, value in config.items():
            so.add_session_config_entry(key, value)
        return so

    @staticmethod
    def _config_of(meta: ModelMeta) -> Dict[str, str]:
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
            raise ModelError(f"metadata {K_ORT_CONFIG}: expected a JSON object of strings, "
                             f"found {text!r} ({exc})") from exc

    def _session(self, names: List[str], meta: Optional[ModelMeta], allow_fp16: bool, last: bool):
        import onnxruntime as ort

        plist = (prov.with_options(names, meta.input_size, meta.precision, allow_fp16,
                                   self.batch_size) if meta is not None else list(names))
        try:
            return ort.InferenceSession(self.model_path, self._options(names), providers=plist)
        except Exception as exc:  # onnxruntime's own exception types; the text is what matters
            if last:
                raise ModelError(f"{self.model_path}: expected an ONNX model onnxruntime can "
                                 f"load, found: {str(exc).strip()}") from exc
            raise _Fallback(f"session creation failed: {str(exc).strip()}") from exc

    def _warm_up(self, sess, meta: ModelMeta) -> None:
        s = meta.input_size
        x = np.zeros((1, s, s, 3), np.uint8)
        try:
            y = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        except Exception as exc:
            raise _Fallback(f"warm-up inference failed: {str(exc).strip()}") from exc
        if y.shape != (1, meta.dim) or not np.all(np.isfinite(y)):
            raise _Fallback(f"warm-up inference gave shape {y.shape} (expected (1, {meta.dim})) "
                            f"or non-finite values")

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
                    meta = ModelMeta.from_props(session_props(sess, self.model_path),
                                                source=self.model_path)
                cfg = self._config_of(meta)
                if cfg != self._ort_config:  # the model asks for session entries: reopen
                    self._ort_config = cfg
                    sess = self._session(names, meta, allow_fp16, last=k == len(tries) - 1)
                check_graph(sess, meta, self.model_path)
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
                    log.warning("%s: %s not used (%s); falling back to %s",
                                self.model_path, want, exc, nxt)
        raise ModelError(f"{self.model_path}: expected a provider that runs the model, found "
                         f"none: " + "; ".join(reasons))

    # -- embedding -----------------------------------------------------------------------
    def embed_batch(self, x: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] BGR -> float32 [N, D], run in chunks of ``batch_size``."""
        s = self.input_size
        if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4
                or x.shape[1:] != (s, s, 3)):
            found = (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, np.ndarray)
                     else type(x).__name__)
            raise ImageError(f"embed_batch: expected uint8 [N, {s}, {s}, 3] BGR, found {found}")
        out = np.empty((x.shape[0], self.dim), np.float32)
        for i in range(0, x.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(x[i:i + self.batch_size])
            if self.gray:
                chunk = to_gray3(chunk)
            try:
                out[i:i + len(chunk)] = self.session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0]
            except Exception as exc:
                raise ModelError(f"{self.model_path}: inference on {self.provider} failed for "
                                 f"a batch of {len(chunk)}: {str(exc).strip()}") from exc
        return out

    def embed_patches_batch(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S, 3] BGR -> (float32 [N, D] embeddings, float32 [N, C, h, w] patches);
        only for a model exported with ``--patches``."""
        if self.patch_spec is None:
            raise ModelError(f"{self.model_path}: expected a model with a {PATCHES_NAME!r} output "
                             f"(dn2-export --patches), found one with {OUTPUT_NAME!r} only")
        s = self.input_size
        if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4
                or x.shape[1:] != (s, s, 3)):
            found = (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, np.ndarray)
                     else type(x).__name__)
            raise ImageError(f"embed_patches_batch: expected uint8 [N, {s}, {s}, 3] BGR, "
                             f"found {found}")
        c, (gh, gw) = self.patch_spec["channels"], self.patch_spec["grid"]
        emb = np.empty((x.shape[0], self.dim), np.float32)
        pat = np.empty((x.shape[0], c, gh, gw), np.float32)
        for i in range(0, x.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(x[i:i + self.batch_size])
            if self.gray:
                chunk = to_gray3(chunk)
            try:
                e, p = self.session.run([OUTPUT_NAME, PATCHES_NAME], {INPUT_NAME: chunk})
            except Exception as exc:
                raise ModelError(f"{self.model_path}: inference on {self.provider} failed for "
                                 f"a batch of {len(chunk)}: {str(exc).strip()}") from exc
            emb[i:i + len(chunk)], pat[i:i + len(chunk)] = e, p
        return emb, pat

    def prepare(self, img: np.ndarray, name: str = "image") -> np.ndarray:
        """One BGR image of any size -> the model's S x S x 3 input (resize rule + crop)."""
        return prepare(img, self.rule, name=name)

    def embed_images(self, imgs: Sequence[np.ndarray]) -> np.ndarray:
        """BGR (or gray / BGRA / 16-bit) arrays of any size -> float32 [N, D]."""
        if len(imgs) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = np.stack([self.prepare(im, f"image {i}") for i, im in enumerate(imgs)])
        return self.embed_batch(batch)

    def _load(self, path) -> Tuple[str, Optional[np.ndarray], Optional[str]]:
        p = str(path)
        try:
            return p, prepare(read_image(p, draft_side=self.draft_side), self.rule, name=p), None
        except Dn2Error as exc:
            return p, None, str(exc)
        except Exception as exc:  # cv2.error, MemoryError, ... from a hostile file: per file
            return p, None, f"{p}: expected a decodable image, found {type(exc).__name__}: {exc}"

    def _loaded(self, paths: Iterable) -> Iterator[Tuple[str, Optional[np.ndarray], Optional[str]]]:
        """Decoded + prepared files in input order; with workers, decoding runs ahead of the
        model in a bounded window (memory: about 2 batches of S x S x 3 crops)."""
        if self.decode_workers == 0:
            yield from map(self._load, paths)
            return
        it = iter(paths)
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="dn2-decode") as ex:
            window = deque(ex.submit(self._load, p)
                           for p in islice(it, 2 * self.batch_size + self.decode_workers))
            while window:
                res = window.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    window.append(ex.submit(self._load, nxt))
                yield res

    def embed_paths(self, paths: Sequence, progress: bool = False) -> EmbedResult:
        """Decode, prepare and embed files; a bad file is an entry in ``errors``, not a stop."""
        paths = list(paths)
        ok: List[str] = []
        errors: List[Tuple[str, str]] = []
        chunks: List[np.ndarray] = []
        pending: List[np.ndarray] = []
        bar = Progress(len(paths), "embed", enabled=progress)

        def flush():
            if pending:
                chunks.append(self.embed_batch(np.stack(pending)))
                bar.update(len(pending))
                pending.clear()

        with bar:
            for p, crop, err in self._loaded(paths):
                if err is not None:
                    errors.append((p, err))
                    bar.update(1)
                    continue
                ok.append(p)
                pending.append(crop)
                if len(pending) == self.batch_size:
                    flush()
            flush()
        emb = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        return EmbedResult(emb, ok, errors)

    def __repr__(self) -> str:
        return (f"Embedder({self.model_path!r}, arch={self.meta.arch}, dim={self.dim}, "
                f"input={self.input_size}, provider={self.provider}, batch={self.batch_size})")


class _Fallback(Exception):
    """Internal: this provider did not work; try the next one."""
