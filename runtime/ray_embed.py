"""Embedding on a Ray cluster: files -> Ray dataset -> actor pool of Embedders -> .npy shards.

    from dn2.runtime.ray_embed import connect, embed_to_shards, load_shards
    started = connect("auto")                  # None: start a local cluster; "auto": join one
    info = embed_to_shards("model.onnx", paths, "shards/", workers=4, threads=1)
    x, names, failed = load_shards("shards/")  # float32 [N, D] (file order), names, bad files

Each actor holds one onnxruntime session (``Embedder``: the same decoding, resize rule and
backend choice as a local fit) and embeds batches of paths; the files must be readable by the
workers at the same paths (one machine, or a shared filesystem). Results stream back to the
driver in input order, which writes them as ``shard-NNNNN.npy`` (float32, no pickle) plus
``index.json`` (dim, shard files and row counts, the embedded paths in file order, the bad
files with their errors). Bad files are rows with an error, never a failed task.

Ray is an optional extra (``pip install 'dn2[ray]'``) and is imported only inside the
functions here; nothing else in the runtime imports this module.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import Dn2Error, MissingExtraError
from .progress import Progress

INDEX = "index.json"
SHARD_ROWS = 65536  # rows per .npy shard (Lite0: 320 MB); the driver holds one shard at a time


def require_ray(purpose: str = "fit and score on a Ray cluster (--ray)"):
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtraError("ray[data]", "ray", purpose) from exc
    return ray


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Join (``address``: "auto" or "ray://host:port" / "host:port") or start (None) a Ray
    cluster. Returns True when this call started it (the caller shuts it down). Reuses a
    connection the process already has."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kw = dict(
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=True,
    )
    try:
        if address in (None, "", "local"):
            ray.init(num_cpus=num_cpus, **kw)
        else:
            ray.init(address=address, **kw)
    except Exception as exc:  # ConnectionError, RuntimeError, ... : ray's own types vary
        where = "a local cluster" if address in (None, "", "local") else f"address {address!r}"
        raise Dn2Error(
            f"--ray: expected a Ray cluster at {where}, found none: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
        ) from exc
    for name in ("ray", "ray.data"):  # its INFO lines (execution plans, log paths) are noise
        logging.getLogger(name).setLevel(logging.WARNING)
    return True


def shutdown() -> None:
    import ray

    ray.shutdown()


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


class EmbedActor:
    """One onnxruntime session per actor; ``__call__`` embeds a batch of paths."""

    def __init__(
        self,
        model_path: str,
        providers,
        threads: Optional[int],
        batch: int,
        jpeg_draft: bool,
        decode_workers: int,
        gray: bool = False,
    ):
        from .embedder import Embedder

        self.emb = Embedder(
            model_path,
            providers=providers,
            threads=threads,
            batch_size=batch,
            jpeg_draft=jpeg_draft,
            decode_workers=decode_workers,
            gray=gray,
        )

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        t0 = time.perf_counter()
        paths = [str(p) for p in batch["path"]]
        res = self.emb.embed_paths(paths)
        out = np.zeros((len(paths), self.emb.dim), np.float32)
        err = {str(p): str(m) for p, m in res.errors}
        ok = np.zeros(len(paths), bool)
        j = 0
        for i, p in enumerate(paths):
            if j < len(res.paths) and res.paths[j] == p:
                out[i], ok[i] = res.embeddings[j], True
                j += 1
        busy = np.zeros(len(paths))  # seconds this actor spent on the batch, on its first row
        busy[:1] = time.perf_counter() - t0
        return {
            "path": np.asarray(paths, dtype=object),
            "ok": ok,
            "embedding": out,
            "error": np.asarray(
                [err.get(p, "" if o else "not embedded") for p, o in zip(paths, ok)], dtype=object
            ),
            "actor": np.full(len(paths), os.getpid(), np.int64),
            "busy_s": busy,
        }


def pool_args(workers: Optional[int], threads: Optional[int], gpus: float) -> Tuple[int, Dict, int]:
    """(actors, ray remote args, threads per actor) for the pool: ``threads`` CPUs per actor
    (onnxruntime intra-op threads; None: 1), ``gpus`` GPUs per actor (0: CPU actors; Ray gives
    each actor its share through CUDA_VISIBLE_DEVICES). GPU actors need a cluster with GPUs
    (``ray.cluster_resources()``) and at most its GPUs / ``gpus`` of them: an actor the
    cluster cannot place would wait for ever, so it is refused here instead."""
    import ray

    t = 1 if threads is None else int(threads)
    if t < 1:
        raise Dn2Error(f"threads: expected >= 1 per Ray actor, found {t}", param="threads")
    if gpus < 0:
        raise Dn2Error(f"gpus: expected >= 0 GPUs per actor, found {gpus}", param="gpus")
    fit = None
    if gpus:
        res = ray.cluster_resources()
        have = float(res.get("GPU", 0.0))
        if have <= 0:
            raise Dn2Error(
                f"gpus {gpus:g}: expected a Ray cluster with GPUs, found none "
                f"(ray.cluster_resources(): {int(res.get('CPU', 0))} CPUs, no GPU); "
                "leave gpus at 0 for CPU actors",
                param="gpus",
            )
        fit = int(have // gpus + 1e-9)
        if fit < 1:
            raise Dn2Error(
                f"gpus: expected at most {have:g} GPUs per actor (the cluster's), found {gpus:g}",
                param="gpus",
            )
        if workers and int(workers) > fit:
            raise Dn2Error(
                f"workers with gpus {gpus:g}: expected at most {fit} actors "
                f"(the cluster has {have:g} GPUs), found {int(workers)}",
                params=("workers", "gpus"),
            )
    n = int(workers) if workers else max(1, min(cluster_cpus() // t, fit or 1 << 30))
    if n < 1:
        raise Dn2Error(f"workers: expected >= 1 actors, found {n}", param="workers")
    args = {"num_cpus": t}
    if gpus:
        args["num_gpus"] = float(gpus)
    return n, args, t


def actor_providers(providers, gpus: float):
    """The execution providers of an actor: a GPU actor with ``auto`` runs CUDA only, so an
    actor holding a GPU never falls back to its CPU unnoticed (onnxruntime without CUDA, e.g.
    no onnxruntime-gpu on the worker, is a clear error from the actor)."""
    return "cuda" if gpus and providers in (None, "auto") else providers


def actor_pool(n: int):
    import ray.data

    return ray.data.ActorPoolStrategy(size=int(n))


def path_dataset(columns: Dict[str, Sequence], rows_per_block):
    """A Ray dataset of ``columns`` (e.g. {"path": [...]}, lists; values as strings), in
    input order, in blocks of ``rows_per_block`` rows (an int, or the size of every block)."""
    import pyarrow as pa
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards and index stay in input order
    ctx.enable_progress_bars = False  # dn2's own line shows images/s across the cluster
    n = len(next(iter(columns.values())))
    if isinstance(rows_per_block, int):
        step = max(1, rows_per_block)
        sizes = [step] * max(1, -(-n // step))
    else:
        sizes = [int(b) for b in rows_per_block] or [1]
    tables, i = [], 0
    for size in sizes:
        tables.append(
            pa.table(
                {
                    k: pa.array([str(v) for v in vals[i : i + size]], pa.string())
                    for k, vals in columns.items()
                }
            )
        )
        i += size
    return ray.data.from_arrow(tables)  # one block per table: no shuffle task needed


def embed_to_shards(
    model_path,
    paths: Sequence[str],
    out_dir,
    *,
    workers: Optional[int] = None,
    threads: Optional[int] = 1,
    gpus: float = 0.0,
    batch: int = 8,
    providers="auto",
    jpeg_draft: bool = False,
    gray: bool = False,
    decode_workers: int = 1,
    shard_rows: int = SHARD_ROWS,
    progress: bool = True,
    actor=EmbedActor,
    columns: Optional[Dict[str, Sequence]] = None,
    total: Optional[int] = None,
    block_rows: Optional[int] = None,
) -> Dict:
    """Embed ``paths`` on the connected cluster and write the shards + index to ``out_dir``.
    Returns the index (also written as ``out_dir/index.json``) plus ``images_per_s`` (since
    the start, actor start-up included), ``steady_images_per_s`` (after the first batch) and
    ``per_actor_images_per_s`` (per actor pid: rows / seconds busy embedding them).

    ``actor`` / ``columns`` / ``total`` / ``block_rows``: another input than image paths
    (``ray_video``: the dataset rows are video segments, each giving ``total`` rows over all,
    one segment per block); the actor returns the same columns as :class:`EmbedActor`."""
    if not paths:
        raise Dn2Error("--ray: expected image files to embed, found none")
    total = len(paths) if total is None else int(total)
    block = 4 * batch if block_rows is None else int(block_rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.npy"):
        old.unlink()
    n_actors, remote, threads = pool_args(workers, threads, gpus)
    ds = path_dataset(columns or {"path": paths}, rows_per_block=block)
    ds = ds.map_batches(
        actor,
        batch_size=block,
        compute=actor_pool(n_actors),
        fn_constructor_kwargs=dict(
            model_path=str(model_path),
            providers=actor_providers(providers, gpus),
            threads=threads,
            batch=batch,
            jpeg_draft=bool(jpeg_draft),
            decode_workers=decode_workers,
            gray=bool(gray),
        ),
        batch_format="numpy",
        **remote,
    )
    names: List[str] = []
    failed: List[List[str]] = []
    shards: List[Dict] = []
    pending: List[np.ndarray] = []
    dim = None
    bar = Progress(total, f"embed on ray ({n_actors} actors)", enabled=progress)

    def flush():
        if pending:
            block = np.concatenate(pending)
            name = f"shard-{len(shards):05d}.npy"
            np.save(out / name, block, allow_pickle=False)
            shards.append({"file": name, "rows": int(len(block))})
            pending.clear()

    start = time.perf_counter()
    first = None  # (time, rows) when the first batch came back: actors are up from then on
    busy: Dict[int, float] = {}  # per actor (pid): seconds inside __call__, rows done
    rows: Dict[int, int] = {}
    with bar:
        try:
            for b in ds.iter_batches(batch_format="numpy", batch_size=None):
                if first is None:
                    first = (time.perf_counter(), len(b["ok"]))
                ok = np.asarray(b["ok"], bool)
                emb = np.asarray(b["embedding"], np.float32)
                dim = emb.shape[1] if emb.ndim == 2 else dim
                for a_, t_ in zip(b["actor"], b["busy_s"]):
                    busy[int(a_)] = busy.get(int(a_), 0.0) + float(t_)
                    rows[int(a_)] = rows.get(int(a_), 0) + 1
                for p, good, msg in zip(b["path"], ok, b["error"]):
                    if good:
                        names.append(str(p))
                    else:
                        failed.append([str(p), str(msg)])
                if ok.any():
                    pending.append(emb[ok])
                if sum(len(a) for a in pending) >= shard_rows:
                    flush()
                bar.update(len(ok))
        except Dn2Error:
            raise
        except Exception as exc:  # an actor that cannot start (bad model, no GPU), ray errors
            raise Dn2Error(f"--ray: embedding on the cluster failed: {_first_line(exc)}") from exc
        flush()
    index = {
        "format": "dn2-embedding-shards",
        "version": 1,
        "dim": dim,
        "model": str(model_path),
        "actors": n_actors,
        "threads_per_actor": threads,
        "gpus_per_actor": gpus,
        "shards": shards,
        "paths": names,
        "failed": failed,
    }
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, out / INDEX)
    done = len(names) + len(failed)
    index["images_per_s"] = done / max(time.perf_counter() - start, 1e-9)
    dt = time.perf_counter() - first[0] if first else 0.0
    index["steady_images_per_s"] = (done - first[1]) / dt if dt > 0 else None
    index["per_actor_images_per_s"] = {
        str(a): round(rows[a] / busy[a], 3) for a in busy if busy[a] > 0
    }
    return index


def _first_line(exc: BaseException) -> str:
    """The user-facing line of an error that came back through Ray (its text carries the
    remote traceback): the last ``SomeError: message`` line, without the module path."""
    import re

    text = str(exc).strip()
    found = re.findall(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", text, re.M)
    if found:
        kind, msg = found[-1]
        return (
            msg.strip()
            if kind in ("Dn2Error", "ModelError", "ImageError", "BundleError", "MissingExtraError")
            else f"{kind}: {msg.strip()}"
        )
    return text.splitlines()[0] if text else type(exc).__name__


def load_shards(out_dir) -> Tuple[np.ndarray, List[str], List[Tuple[str, str]]]:
    """(embeddings float32 [N, D] in file order, their paths, bad files) from ``out_dir``."""
    out = Path(out_dir)
    try:
        index = json.loads((out / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise Dn2Error(f"{out}: expected embedding shards with {INDEX}, found: {exc}") from exc
    if index.get("format") != "dn2-embedding-shards":
        raise Dn2Error(
            f"{out / INDEX}: expected format dn2-embedding-shards, found {index.get('format')!r}"
        )
    n = sum(int(s["rows"]) for s in index["shards"])
    if n != len(index["paths"]):
        raise Dn2Error(f"{out}: expected {len(index['paths'])} rows (one per path), found {n}")
    x = np.empty((n, int(index["dim"] or 0)), np.float32)
    i = 0
    for s in index["shards"]:
        a = np.load(out / s["file"], mmap_mode="r", allow_pickle=False)
        if a.shape != (int(s["rows"]), x.shape[1]):
            raise Dn2Error(
                f"{out / s['file']}: expected shape ({s['rows']}, {x.shape[1]}), found {a.shape}"
            )
        x[i : i + len(a)] = a
        i += len(a)
    return x, list(index["paths"]), [tuple(f) for f in index["failed"]]
