"""Images in, pooled embeddings out, over a backend (onnxruntime by default).

    emb = Embedder("model.onnx", providers="auto", threads=None, batch_size=8)
    emb = Embedder(backend=TrtEngine("model.engine", meta=...))   # any dn2.runtime.backend
    emb.provider                  # the provider a real warm-up inference ran on
    emb.embed_batch(uint8 [N, S, S, 3]) -> float32 [N, D]
    emb.run_batch(uint8 [N, S, S, 3]) -> {"embedding": [N, D], ...every named output}
    emb.embed_images([bgr, ...])  -> float32 [N, D]   (any sizes; resized by the model's rule)
    emb.embed_paths(paths)        -> EmbedResult(embeddings [M, D], paths (M, in input order),
                                                 errors [(path, message)])

The model's own metadata (``dn2.*`` metadata_props) gives the resize rule and the embedding
size; the graph's input/output names, dtypes and shapes are checked against the dn2 contract
(``dn2.runtime.contract``) and a mismatch is a ``ModelError`` naming expected and found.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .backend import Backend
from .color import to_gray3
from .contract import check_signature, ort_signature
from .errors import Dn2Error, ImageError, ModelError
from .images import draft_side_for, prepare, read_image
from .modelmeta import EMBEDDING, PATCHES_NAME, ModelMeta, patch_spec
from .ort_backend import CPU_SESSION_DEFAULTS, OrtBackend  # noqa: F401  (re-exported)
from .pipeline import Batch, overlapped
from .progress import Progress

log = logging.getLogger("dn2")


class EmbedResult(NamedTuple):
    embeddings: np.ndarray  # float32 [M, D], row i belongs to paths[i]
    paths: List[str]  # the files that were embedded, in input order
    errors: List[Tuple[str, str]]  # (path, message) for every file that was not


def check_graph(sess, meta: ModelMeta, source: str) -> None:
    """The session's signature must be the dn2 contract with the metadata's sizes."""
    check_signature(meta, *ort_signature(sess), source)


class Embedder:
    """Decoding, resizing and batching over a backend; see the module doc.

    ``model_path``: a dn2 ONNX model (an onnxruntime backend is opened on it), or ``backend=``
    an open backend (``dn2.runtime.backend``: ``OrtBackend``, ``TrtEngine``); then
    ``providers``, ``threads``, ``allow_fp16`` are the backend's business and ignored here.
    ``providers``: "auto" (TensorRT > CUDA > CPU among those available), a name, or a list
    (see ``dn2.runtime.providers``). ``threads``: onnxruntime intra-op threads (None: its
    default, all cores). ``decode_workers``: threads decoding and resizing files in
    ``embed_paths`` while the model runs (None: 2; 0: decode in the calling thread). Measured
    with ``python -m dn2.tools.bench.embed lite0.onnx --threads 2`` on the 2-core dev VM, 32
    1280x720 JPEGs, Lite0 on the CPU: 12.8 img/s with 0 workers, 15.5 with 1, 15.7 with 2 (decode
    + resize alone 14.7 ms/img, the model 32.2 ms/img); on a GPU box the model is faster than
    decoding and the workers matter more.
    ``allow_fp16``: let TensorRT use FP16 kernels for an FP32 model.
    ``cpu_split``: split CPU batches over two sessions (None: fp32 and int8 models; see
    ``dn2.runtime.ort_backend``).
    ``jpeg_draft``: ``embed_paths`` decodes large JPEGs at reduced scale
    (``dn2.runtime.images.read_image(draft_side=...)``); fit and score must agree on it, which is
    why a bundle records it (manifest ``score.jpeg_draft``).
    ``gray``: every batch is converted BGR -> gray -> BGR before the model (a bank fitted on
    gray images, manifest ``score.color``; ``dn2.runtime.color``).
    """

    def __init__(
        self,
        model_path=None,
        providers="auto",
        threads: Optional[int] = None,
        batch_size: int = 8,
        decode_workers: Optional[int] = None,
        allow_fp16: bool = True,
        jpeg_draft: bool = False,
        gray: bool = False,
        backend=None,
        cpu_split: Optional[bool] = None,
    ):
        if backend is None:
            if model_path is None:
                raise ModelError("Embedder: expected a model path or a backend, found neither")
            backend = OrtBackend(
                model_path,
                providers=providers,
                threads=threads,
                batch_size=batch_size,
                allow_fp16=allow_fp16,
                cpu_split=cpu_split,
            )
        elif not isinstance(backend, Backend) or not isinstance(backend.meta, ModelMeta):
            raise ModelError(
                f"Embedder backend: expected a dn2 backend (run, meta, provider, "
                f"batch_size) with the model's metadata, found "
                f"{type(backend).__name__}"
                + (
                    " without metadata (keep the engine's .json sidecar or pass meta=)"
                    if isinstance(backend, Backend)
                    else ""
                )
            )
        self.backend = backend
        self.model_path = str(
            model_path
            if model_path is not None
            else getattr(backend, "model_path", None) or getattr(backend, "path", "")
        )
        self.batch_size = int(backend.batch_size)
        self.threads = threads
        self.decode_workers = 2 if decode_workers is None else max(0, int(decode_workers))
        self.meta: ModelMeta = backend.meta
        self.provider: str = backend.provider
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

    # the onnxruntime backend's session details, where tests and tools look for them
    @property
    def session(self):
        return getattr(self.backend, "session", None)

    @property
    def fallbacks(self) -> List[Tuple[str, str]]:
        return list(getattr(self.backend, "fallbacks", []))

    @property
    def _ort_config(self) -> Dict[str, str]:
        return dict(getattr(self.backend, "_ort_config", {}))

    # -- embedding -----------------------------------------------------------------------
    def embed_batch(self, x: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] BGR -> float32 [N, D], run in chunks of ``batch_size``."""
        s = self.input_size
        if (
            not isinstance(x, np.ndarray)
            or x.dtype != np.uint8
            or x.ndim != 4
            or x.shape[1:] != (s, s, 3)
        ):
            found = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ImageError(f"embed_batch: expected uint8 [N, {s}, {s}, 3] BGR, found {found}")
        if self.gray:  # a bank of gray images scores every input as gray
            x = to_gray3(x)
        return self.run_batch(x, [EMBEDDING])[EMBEDDING]

    def run_batch(
        self, x: np.ndarray, outputs: Optional[Sequence[str]] = None
    ) -> Dict[str, np.ndarray]:
        """uint8 [N, S, S, 3] BGR -> every named output of the model (or those in
        ``outputs``), e.g. ``{"embedding": float32 [N, D]}``."""
        if x.shape[0] == 0:
            return {
                o.name: np.zeros((0,) + tuple(int(d) for d in o.shape[1:]), np.float32)
                for o in self.meta.outputs
                if outputs is None or o.name in outputs
            }
        return self.backend.run(x, outputs)

    def embed_patches_batch(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S, 3] BGR -> (float32 [N, D] embeddings, float32 [N, C, h, w] patches);
        only for a model exported with ``--patches``."""
        if self.patch_spec is None:
            raise ModelError(
                f"{self.model_path}: expected a model with a {PATCHES_NAME!r} output "
                f"(dn2-export --patches), found one with {EMBEDDING!r} only"
            )
        s = self.input_size
        if (
            not isinstance(x, np.ndarray)
            or x.dtype != np.uint8
            or x.ndim != 4
            or x.shape[1:] != (s, s, 3)
        ):
            found = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ImageError(
                f"embed_patches_batch: expected uint8 [N, {s}, {s}, 3] BGR, found {found}"
            )
        if self.gray:
            x = to_gray3(x)
        out = self.run_batch(x, [EMBEDDING, PATCHES_NAME])
        return out[EMBEDDING], out[PATCHES_NAME]

    def prepare(self, img: np.ndarray, name: str = "image") -> np.ndarray:
        """One BGR image of any size -> the model's S x S x 3 input (resize rule + crop)."""
        return prepare(img, self.rule, name=name)

    def embed_images(self, imgs: Sequence[np.ndarray]) -> np.ndarray:
        """BGR (or gray / BGRA / 16-bit) arrays of any size -> float32 [N, D]."""
        if len(imgs) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = np.stack([self.prepare(im, f"image {i}") for i, im in enumerate(imgs)])
        return self.embed_batch(batch)

    def load_file(self, path) -> np.ndarray:
        """One file decoded and prepared (the model's S x S x 3 input); a file that cannot
        be is a ``Dn2Error`` naming it and what was found."""
        p = str(path)
        try:
            return prepare(read_image(p, draft_side=self.draft_side), self.rule, name=p)
        except Dn2Error:
            raise
        except Exception as exc:  # cv2.error, MemoryError, ... from a hostile file: per file
            raise ImageError(
                f"{p}: expected a decodable image, found {type(exc).__name__}: {exc}"
            ) from None

    def run_paths(self, paths: Iterable, tail=None) -> Iterator[Batch]:
        """Batches over files, in input order, through :func:`dn2.runtime.pipeline.overlapped`:
        decoding in ``decode_workers`` threads ahead of the model, ``tail(embeddings)`` (e.g.
        the kNN score) overlapped with the next batch's model call."""
        return overlapped(
            (str(p) for p in paths),
            self.load_file,
            self.embed_batch,
            tail=tail,
            batch=self.batch_size,
            workers=self.decode_workers,
        )

    def embed_paths(self, paths: Sequence, progress: bool = False) -> EmbedResult:
        """Decode, prepare and embed files; a bad file is an entry in ``errors``, not a stop."""
        paths = list(paths)
        ok: List[str] = []
        errors: List[Tuple[str, str]] = []
        chunks: List[np.ndarray] = []
        with Progress(len(paths), "embed", enabled=progress) as bar:
            for b in self.run_paths(paths):
                errors += b.errors
                ok += b.items
                if b.items:
                    chunks.append(b.output)
                bar.update(len(b.errors) + len(b.items))
        emb = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        return EmbedResult(emb, ok, errors)

    def __repr__(self) -> str:
        return (
            f"Embedder({self.model_path!r}, arch={self.meta.arch}, dim={self.dim}, "
            f"input={self.input_size}, provider={self.provider}, batch={self.batch_size})"
        )
