"""Embed each dataset image once; keep the embeddings on disk for every later protocol and run.

The cache key is the model file's sha256 + the dataset fingerprint + the model's resize rule, so
a different model, precision, input size or dataset content never reuses stale vectors. Per split
the folder holds plain ``.npy`` files (no pickles):

* ``<split>.emb.npy``   float32 [N, D], memory-mapped, row i = item i of the split
* ``<split>.state.npy`` uint8 [N]: 0 not embedded yet, 1 embedded, 2 unreadable (see errors.json)

Rows are written and flushed before their state flips to 1, so an interrupted run loses at most
the chunk in flight and the next run embeds only what is missing. Subsample runs fill part of
the same arrays; a later full run reuses them. One writer per cache folder at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from dn2.runtime.bundle import sha256_file
from dn2.runtime.errors import Dn2Error, ImageError
from dn2.runtime.modelmeta import read_model_meta
from dn2.runtime.progress import Progress

from .datasets import Dataset

CHUNK = 256  # images prepared, embedded and flushed together
MISSING, OK, FAILED = 0, 1, 2


def default_cache_dir() -> Path:
    return Path(os.environ.get("DN2_EVAL_CACHE", Path.home() / ".cache" / "dn2" / "eval"))


class EmbeddingCache:
    """Embeddings of one dataset under one model, filled lazily by :meth:`get`."""

    def __init__(
        self,
        model_path: str,
        dataset: Dataset,
        cache_dir: Optional[str] = None,
        threads: Optional[int] = None,
        batch_size: int = 32,
        providers: str = "auto",
        progress: bool = True,
    ):
        if not Path(model_path).is_file():
            found = "a directory" if Path(model_path).is_dir() else "no such file"
            raise Dn2Error(f"model {model_path!r}: expected a dn2 ONNX file, found {found}")
        self.model_path, self.dataset = str(model_path), dataset
        self.meta = read_model_meta(self.model_path)
        self.model_sha256 = sha256_file(self.model_path)
        self.threads, self.batch_size, self.providers = threads, batch_size, providers
        self.progress = progress
        key = {
            "model_sha256": self.model_sha256,
            "dataset": dataset.fingerprint,
            "resize": self.meta.resize.to_json(),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset.name)
        self.folder = Path(cache_dir or default_cache_dir()) / f"{safe}-{self.meta.arch}-{digest}"
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_file = self.folder / "meta.json"
        if not meta_file.exists():
            meta_file.write_text(
                json.dumps(
                    dict(key, model=self.model_path, arch=self.meta.arch, dim=self.meta.dim),
                    indent=1,
                )
            )
        self.n_embedded = 0  # images run through the model by this object (tests count it)
        self._embedder = None
        self._arrays: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}

    # -- storage -------------------------------------------------------------------------------
    def _open(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        if split in self._arrays:
            return self._arrays[split]
        n, dim = len(self.dataset.split(split)), self.meta.dim
        emb_p, st_p = self.folder / f"{split}.emb.npy", self.folder / f"{split}.state.npy"
        if not (emb_p.exists() and st_p.exists()):
            for p, dt, shape in ((emb_p, np.float32, (n, dim)), (st_p, np.uint8, (n,))):
                tmp = p.with_suffix(f".tmp{os.getpid()}.npy")
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape)
                arr.flush()
                del arr
                os.replace(tmp, p)
        emb = np.load(emb_p, mmap_mode="r+")
        state = np.load(st_p, mmap_mode="r+")
        if emb.shape != (n, dim) or emb.dtype != np.float32 or state.shape != (n,):
            raise Dn2Error(
                f"embedding cache {self.folder}: {split} arrays have shape "
                f"{emb.shape}/{state.shape}, expected ({n}, {dim})/({n},); "
                f"delete the folder to rebuild it"
            )
        self._arrays[split] = (emb, state)
        return emb, state

    def _errors_file(self, split: str) -> Path:
        return self.folder / f"{split}.errors.json"

    def errors(self, split: str) -> Dict[str, str]:
        p = self._errors_file(split)
        return json.loads(p.read_text()) if p.exists() else {}

    # -- embedding -----------------------------------------------------------------------------
    @property
    def embedder(self):
        if self._embedder is None:
            from dn2.runtime.embedder import Embedder

            self._embedder = Embedder(
                self.model_path,
                providers=self.providers,
                threads=self.threads,
                batch_size=self.batch_size,
            )
        return self._embedder

    def _embed_missing(self, split: str, todo: np.ndarray) -> None:
        from dn2.runtime.images import prepare

        emb, state = self._open(split)
        data = self.dataset.split(split)
        errors = self.errors(split)
        rule = self.meta.resize
        bar = Progress(len(todo), f"embed {self.dataset.name}/{split}", enabled=self.progress)
        try:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                good, batch = [], []
                for i in chunk:
                    try:
                        batch.append(prepare(data.load(int(i)), rule))
                        good.append(int(i))
                    except ImageError as exc:  # a bad file is reported, the run goes on
                        errors[data.ids[int(i)]] = str(exc)
                        state[int(i)] = FAILED
                if good:
                    out = self.embedder.embed_batch(np.stack(batch))
                    emb[np.asarray(good)] = out
                    emb.flush()
                    state[np.asarray(good)] = OK
                state.flush()
                self.n_embedded += len(good)
                bar.update(len(chunk))
        finally:
            bar.close()
            if errors:
                self._errors_file(split).write_text(json.dumps(errors, indent=1))

    def get(self, split: str, indices: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        """Embeddings [n, D] of items ``indices`` of ``split`` (embedding those not cached yet)
        and a bool mask of the items that could be read (rows of unreadable ones are zero)."""
        idx = np.asarray(indices, dtype=np.int64)
        emb, state = self._open(split)
        todo = idx[state[idx] == MISSING]
        if len(todo):
            self._embed_missing(split, np.unique(todo))
        ok = np.asarray(state[idx] == OK)
        return np.array(emb[idx], dtype=np.float32), ok
