"""``dn2 score --ray``: batch-score many images and videos against a bundle on a Ray cluster.

    summary = score_ray("bundle", ["archive/", "@list.txt", "line3.mp4"], "scores/",
                        fmt="parquet", address="auto", workers=8)

Each actor loads the bundle once (``Detector.load``: digests, schema, one onnxruntime
session) and scores batches of paths with ``Detector.score_paths`` — the same numbers as
``dn2 score`` — and video files frame by frame, in segments decoded by the workers. The
driver streams the rows back in input order and writes them as shards
``part-NNNNN.parquet`` or ``part-NNNNN.jsonl`` in ``out_dir``. Every row has the fields of
``dn2 score --json`` (``path``, ``score``, ``threshold``, ``anomalous``, ``error``, and any
field ``ScoreResult.to_dict`` adds) plus ``frame`` (the frame index in a video; null for an
image). A bad file or video is a row with ``error`` set, never a failed job.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

from .errors import Dn2Error
from .progress import Progress
from .ray_embed import (
    _first_line,
    actor_pool,
    actor_providers,
    connect,
    path_dataset,
    pool_args,
    shutdown,
)
from .ray_inputs import expand_inputs, split_videos

TYPES = {
    "path": "string",
    "frame": "int64",
    "score": "float64",
    "threshold": "float64",
    "anomalous": "bool_",
    "error": "string",
    "norm_score": "float64",
}
SHARD_ROWS = 100_000


def _table(rows: List[Dict]):
    """Rows -> a pyarrow Table with the known fields typed (a column of nulls stays typed)."""
    import pyarrow as pa

    t = pa.Table.from_pylist(rows)
    cols = []
    for name in t.column_names:
        c = t.column(name)
        if name in TYPES:
            c = c.cast(getattr(pa, TYPES[name])())
        elif pa.types.is_null(c.type):
            c = c.cast(pa.string())
        cols.append(c)
    return pa.table(cols, names=t.column_names)


class ScoreActor:
    """One loaded bundle (and onnxruntime session) per actor; rows of kind "image" are paths,
    rows of kind "video" are segments of a video file (``ray_video.plan_segments``)."""

    def __init__(
        self,
        bundle: str,
        providers,
        threads: Optional[int],
        batch: int,
        jpeg_draft: Optional[bool],
    ):
        from .detector import Detector

        self.det = Detector.load(
            bundle, providers=providers, threads=threads, batch_size=batch, jpeg_draft=jpeg_draft
        )
        self.batch = batch

    def _error(self, path, error, frame=None) -> Dict:
        th = self.det.threshold
        return {
            "path": path,
            "frame": frame,
            "score": None,
            "threshold": th,
            "anomalous": None,
            "error": error,
            "norm_score": None,
        }

    def _segment(self, path: str, start: int, stop: Optional[int], every: int) -> List[Dict]:
        """One row per frame, with the fields of ``score --json`` (``ScoreResult.to_dict``)."""
        from .ray_video import read_segment

        rows: List[Dict] = []
        frames, idx = [], []

        def flush():
            if frames:
                for i, r in zip(idx, self.det.analyze_images(frames, maps=False)):
                    d = r.to_dict()
                    d.update(path=path, frame=i)
                    rows.append(d)
                frames.clear()
                idx.clear()

        i = start
        try:
            for i, img in read_segment(path, start, stop, every):
                frames.append(img)
                idx.append(i)
                if len(frames) == self.batch:
                    flush()
            flush()
        except Dn2Error as exc:
            rows.append(self._error(path, str(exc), frame=i))
        except Exception as exc:  # a frame OpenCV decoded into something unusable
            rows.append(self._error(path, f"{path}: frame {i}: {type(exc).__name__}: {exc}", i))
        if not rows:
            rows.append(
                self._error(path, f"{path}: expected video frames from frame {start}, found none")
            )
        return rows

    def __call__(self, batch):
        from .ray_video import segment_rows

        paths = [str(p) for p in batch["path"]]
        kinds = [str(k) for k in batch["kind"]]
        segs = segment_rows(batch)
        rows: List[Dict] = []
        images = [p for p, k in zip(paths, kinds) if k == "image"]
        scored = {}
        if images:
            for r in self.det.score_paths(images):
                d = r.to_dict()
                d.setdefault("frame", None)
                scored[r.path] = d
        for j, (p, k) in enumerate(zip(paths, kinds)):
            rows.extend(self._segment(*segs[j]) if k == "video" else [scored[p]])
        return _table(rows)


def _writer(out: Path, fmt: str):
    import pyarrow.parquet as pq

    count = [0]

    def write(tables) -> str:
        import pyarrow as pa

        t = pa.concat_tables(tables, promote_options="permissive")
        name = f"part-{count[0]:05d}.{'parquet' if fmt == 'parquet' else 'jsonl'}"
        count[0] += 1
        tmp = out / (name + ".tmp")
        if fmt == "parquet":
            pq.write_table(t, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in t.to_pylist():
                    f.write(json.dumps(row) + "\n")
        os.replace(tmp, out / name)
        return name

    return write


def score_ray(
    bundle,
    inputs,
    out_dir,
    *,
    fmt: str = "parquet",
    address: Optional[str] = None,
    workers: Optional[int] = None,
    threads: Optional[int] = 1,
    gpus: float = 0.0,
    num_cpus: Optional[int] = None,
    batch: int = 8,
    providers="auto",
    jpeg_draft: Optional[bool] = None,
    every: int = 1,
    max_frames: Optional[int] = None,
    seconds: Optional[float] = None,
    shard_rows: int = SHARD_ROWS,
    progress: bool = True,
) -> Dict:
    """Score ``inputs`` (files, folders, globs, ``@LIST`` files, videos) on the cluster and write
    the shards. Videos: every ``every``-th frame, the first ``max_frames`` of those or those of
    the first ``seconds`` (the frames a local fit of the video takes), decoded in segments by
    the workers (``ray_video``). Returns {rows, scored, failed, shards, images_per_s, actors}."""
    from .bundle import load_bundle
    from .fit_video import check_stream_args
    from .images import find_images
    from .ray_video import plan_segments

    if fmt not in ("parquet", "jsonl"):
        raise Dn2Error(f"fmt: expected parquet or jsonl, found {fmt!r}", param="fmt")
    check_stream_args([], every, max_frames, seconds)
    bundle = str(Path(bundle).resolve())
    threshold = load_bundle(bundle).manifest.threshold.value  # validates it here
    videos, rest = split_videos(expand_inputs(inputs))
    files, problems = find_images(rest) if rest else ([], [])
    segs, bad = plan_segments(videos, every=every, max_frames=max_frames, seconds=seconds)
    problems = list(problems) + bad
    items = [(p, "image", 0, "", 1) for p in files] + [
        (s["video"], "video", s["start"], "" if s["stop"] is None else s["stop"], s["every"])
        for s in segs
    ]
    if not items and not problems:
        raise Dn2Error(f"score --ray: expected images or videos in {list(inputs)}, found none")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("part-*.parquet")) + list(out.glob("part-*.jsonl")):
        old.unlink()
    write = _writer(out, fmt)
    shards: List[str] = []
    n_rows = n_failed = 0
    pending: List = []
    if problems:
        pending.append(
            _table(
                [
                    {
                        "path": p,
                        "frame": None,
                        "score": None,
                        "threshold": threshold,
                        "anomalous": None,
                        "error": m,
                        "norm_score": None,
                    }
                    for p, m in problems
                ]
            )
        )
        n_rows += len(problems)
        n_failed += len(problems)
    rate, n_actors = 0.0, 0
    if items:
        started = connect(address, num_cpus=num_cpus)
        try:
            n_actors, remote, threads = pool_args(workers, threads, gpus)
            cols = dict(zip(("path", "kind", "start", "stop", "every"), zip(*items)))
            step = 4 * batch  # images in blocks of 4 batches, each video segment a block
            blocks = [min(step, len(files) - i) for i in range(0, len(files), step)]
            blocks += [1] * len(segs)
            ds = path_dataset({c: list(v) for c, v in cols.items()}, blocks)
            ds = ds.map_batches(
                ScoreActor,
                batch_size=None,  # one block per call
                compute=actor_pool(n_actors),
                fn_constructor_kwargs=dict(
                    bundle=bundle,
                    providers=actor_providers(providers, gpus),
                    threads=threads,
                    batch=batch,
                    jpeg_draft=jpeg_draft,
                ),
                batch_format="numpy",
                **remote,
            )
            start = time.perf_counter()
            bar = Progress(
                None if videos else len(items),
                f"score on ray ({n_actors} actors)",
                enabled=progress,
            )
            with bar:
                try:
                    for t in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                        pending.append(t)
                        n_rows += t.num_rows
                        n_failed += t.num_rows - t.column("error").null_count
                        bar.update(t.num_rows)
                        if sum(p.num_rows for p in pending) >= shard_rows:
                            shards.append(write(pending))
                            pending = []
                except Dn2Error:
                    raise
                except Exception as exc:  # an actor that cannot load the bundle, ray errors
                    raise Dn2Error(
                        f"--ray: scoring on the cluster failed: {_first_line(exc)}"
                    ) from exc
            rate = (n_rows - len(problems)) / max(time.perf_counter() - start, 1e-9)
        finally:
            if started:
                shutdown()
    if pending:
        shards.append(write(pending))
    return {
        "rows": n_rows,
        "scored": n_rows - n_failed,
        "failed": n_failed,
        "shards": shards,
        "out": str(out),
        "images_per_s": rate,
        "actors": n_actors,
    }
