"""The pipeline behind the model (dn2.runtime.pipeline): decode pool, model and kNN overlapped,
order kept, bad files reported, on real textile photos through a real onnxruntime session."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from dn2.runtime.detector import Detector
from dn2.runtime.embedder import Embedder
from dn2.runtime.pipeline import lower_priority, overlapped

from tiny_model import make_tiny_model


@pytest.fixture(scope="module")
def files(textile_dirs, tmp_path_factory):
    """21 real JPEGs with a truncated JPEG, a text file named .png and a missing path among
    them."""
    root = tmp_path_factory.mktemp("pipe")
    real = sorted(str(p) for p in textile_dirs["nominal"].glob("*.jpg"))[:21]
    cut = root / "cut.jpg"
    cut.write_bytes(Path(real[0]).read_bytes()[:200])  # a JPEG cut off in its header
    text = root / "notes.png"
    text.write_text("not an image")
    paths = real[:5] + [str(cut)] + real[5:12] + [str(text)] + real[12:] + [str(root / "no.jpg")]
    return make_tiny_model(root / "tiny.onnx"), paths, {str(cut), str(text), str(root / "no.jpg")}


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_same_embeddings_in_input_order_with_and_without_overlap(files, batch):
    model, paths, bad = files
    seq = Embedder(model, batch_size=batch, decode_workers=0).embed_paths(paths)
    ovl = Embedder(model, batch_size=batch, decode_workers=2).embed_paths(paths)
    good = [p for p in paths if p not in bad]
    assert seq.paths == ovl.paths == good  # input order, bad files left out
    assert [p for p, _ in ovl.errors] == [p for p in paths if p in bad]  # each reported
    assert all(msg and "Traceback" not in msg for _, msg in ovl.errors)
    # the same batches through the same session: the same numbers (float32 round-off only)
    np.testing.assert_allclose(ovl.embeddings, seq.embeddings, rtol=1e-6, atol=1e-7)


def test_score_paths_overlaps_knn_and_reports_bad_files(files, tmp_path):
    from dn2.runtime.fit import fit_bundle

    model, paths, bad = files
    good = [p for p in paths if p not in bad]
    # without camera variants: with them the fitted images score ~1e-6 (against themselves
    # and their variant), where float32 rounding of the batch GEMM is no longer relative
    bundle = fit_bundle(model, tmp_path / "b", images=good[:12], augment="none", progress=False)
    det = Detector.load(str(bundle), batch_size=4)
    twice = paths + [good[0]]  # a file named twice gets two results
    res = det.score_paths(twice)
    assert [r.path for r in res] == twice
    assert all((r.error is not None) == (r.path in bad) for r in res)
    ref = det.score_embeddings(det.embedder.embed_paths(good).embeddings)
    got = np.array([r.score for r in res if r.error is None][:-1])
    # squared distances as |q|^2 + |b|^2 - 2 q.b in float32: the GEMM of 4 queries rounds
    # differently from that of 21, up to ~2e-4 relative on these small distances
    np.testing.assert_allclose(got, ref, rtol=1e-3)
    assert res[-1].score == pytest.approx(res[0].score, rel=1e-6)


def test_the_tail_of_a_batch_runs_beside_the_next_model_call(files):
    """kNN of batch i overlaps the model on batch i + 1: the tail waits until the model has
    started the next batch (without overlap it would wait forever; the timeout only guards)."""
    model, paths, bad = files
    emb = Embedder(model, batch_size=4)
    good = [p for p in paths if p not in bad][:16]
    started = [threading.Event() for _ in range(5)]
    calls, seen = [0], []

    def run_model(x):
        started[calls[0]].set()
        calls[0] += 1
        return emb.embed_batch(x)

    def tail(y):
        i = len(seen)
        seen.append(threading.current_thread().name)
        last = i == 3
        return y, last or started[i + 1].wait(timeout=30)

    outs = list(overlapped(good, emb.load_file, run_model, tail=tail, batch=4))
    assert [o for _, o in (b.output for b in outs)] == [True] * 4
    assert set(seen) == {"dn2-tail"}
    np.testing.assert_allclose(
        np.concatenate([b.output[0] for b in outs]), emb.embed_paths(good).embeddings, rtol=1e-6
    )


def test_a_batch_comes_out_before_the_next_is_modelled(files):
    """Latency: batch i is handed over while the model still holds batch i + 1."""
    model, paths, bad = files
    emb = Embedder(model, batch_size=1)
    good = [p for p in paths if p not in bad][:3]
    got_first = threading.Event()
    calls = [0]

    def run_model(x):
        calls[0] += 1
        if calls[0] == 2:  # the second batch waits until the first was received
            assert got_first.wait(timeout=30), "batch 1 was held back behind batch 2"
        return emb.embed_batch(x)

    it = overlapped(good, emb.load_file, run_model, batch=1)
    next(it)
    got_first.set()
    assert len(list(it)) == 2


def test_errors_reach_the_caller_and_leaving_early_stops_the_threads(files):
    model, paths, bad = files
    emb = Embedder(model, batch_size=2)
    good = [p for p in paths if p not in bad]

    def broken(x):
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="model exploded"):
        list(overlapped(good, emb.load_file, broken, batch=2))
    it = overlapped(good, emb.load_file, emb.embed_batch, batch=2)
    next(it)
    it.close()  # the caller stops after one batch
    names = {t.name for t in threading.enumerate()}
    assert "dn2-model" not in names and "dn2-tail" not in names


@pytest.mark.parametrize("batch", [1, 5])
def test_tiled_views_keep_order_and_errors_with_the_decode_pool(files, batch):
    """Frames cut into 2x2 tiles: a batch holds about ``batch`` model inputs (tiles), the
    items keep input order with the bad files' errors in place, and the numbers are those of
    the caller-thread path."""
    from dn2.runtime.viewembed import ViewEmbedder
    from dn2.runtime.views import View

    model, paths, bad = files
    view = View.parse("tiles=2x2")
    ovl = list(ViewEmbedder(Embedder(model, batch_size=batch), view, patches=False).paths(paths))
    seq = ViewEmbedder(Embedder(model, batch_size=batch, decode_workers=0), view, patches=False)
    seq = list(seq.paths(paths))
    assert [i.name for i in ovl] == [i.name for i in seq] == paths
    assert [i.name for i in ovl if i.error] == [p for p in paths if p in bad]
    for a, b in zip(ovl, seq):
        if a.error is None:
            assert a.embeddings.shape == (4, b.embeddings.shape[1]) and a.rects == b.rects
            # the same batches through the same session (float32 round-off only)
            np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-6, atol=1e-7)


def test_opencv_runs_one_thread_while_a_decode_pool_runs_and_is_restored(files):
    """The decode pool is the parallelism: OpenCV's own pool is at one thread while any
    pipeline's pool decodes (two pipelines at once too), and back to what it was after."""
    import cv2

    model, paths, bad = files
    emb = Embedder(model, batch_size=2)
    # 8 batches: more than the pipeline holds in flight (queues of 1 and 2, a batch in the
    # model, one in the tail), so the first one cannot run to its end while it is paused
    good = [p for p in paths if p not in bad][:16]
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        seen = []

        def load(p):
            seen.append(cv2.getNumThreads())
            return emb.load_file(p)

        first = overlapped(good, load, emb.embed_batch, batch=2)
        next(first)  # the first pipeline's pool is running
        second = list(overlapped(good, load, emb.embed_batch, batch=2))  # a second at once
        assert cv2.getNumThreads() == 1  # the first one is still running
        rest = list(first)
        assert len(second) == 8 and len(rest) == 7
        assert seen and set(seen) == {1}
        assert cv2.getNumThreads() == 2  # both done: restored
        seen.clear()
        list(overlapped(good, load, emb.embed_batch, batch=2, workers=0))  # no pool
        assert set(seen) == {2}  # the caller's setting is left alone
    finally:
        cv2.setNumThreads(before)


def test_overlap_ab_runs_every_variant_on_a_real_session(files, tmp_path):
    from dn2.tools.bench import overlap_ab

    model, paths, bad = files
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in [p for p in paths if p not in bad][:4]:
        (frames / Path(p).name).write_bytes(Path(p).read_bytes())
    out = tmp_path / "ab.json"
    argv = [str(model), "--frames", str(frames), "--n", "4", "--batch", "1", "2", "--rounds", "2"]
    assert overlap_ab.main(argv + ["--threads", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert set(got) == {f"{v} b{b}" for v in overlap_ab.VARIANTS for b in (1, 2)}
    for row in got.values():
        assert len(row["rounds"]) == 2 and all(r > 0 for r in row["rounds"])
        assert row["median"] == pytest.approx(float(np.median(row["rounds"])), abs=1e-4)


def _nice_and_policy():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), os.sched_getscheduler(0)


def _can_lower(nice) -> bool:
    """Whether this OS lets a thread take ``nice`` (probed in a throwaway thread), and whether
    doing so changes anything here (a test run already at nice 19 / SCHED_IDLE proves nothing)."""
    got = []

    def probe():
        before = _nice_and_policy()
        lower_priority(nice)
        got.append(_nice_and_policy() != before)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return got == [True]


linux_priorities = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE"), reason="Linux thread priorities"
)


@linux_priorities
@pytest.mark.parametrize("nice", [19, "idle"])
def test_decode_and_tail_threads_run_at_the_asked_priority_and_the_caller_keeps_its_own(
    files, nice
):
    """The decode pool (and the tail, when asked) yields the cores to the model's threads; the
    caller's and the model stage's threads keep their priority, and every item still comes out."""
    if not _can_lower(nice):
        pytest.skip(f"this OS or test run cannot lower a thread to {nice!r}")
    model, paths, bad = files
    emb = Embedder(model, batch_size=2)
    good = [p for p in paths if p not in bad][:8]
    mine = _nice_and_policy()
    seen, in_model, in_tail = [], [], []

    def load(p):
        seen.append(_nice_and_policy())
        return emb.load_file(p)

    def model_fn(x):
        in_model.append(_nice_and_policy())
        return emb.embed_batch(x)

    def tail(y):
        in_tail.append(_nice_and_policy())
        return y

    kw = dict(batch=2, decode_nice=nice, tail_nice=nice)
    out = [b for b in overlapped(good, load, model_fn, tail=tail, **kw)]
    assert sum(len(b.items) for b in out) == len(good)
    want = (max(mine[0], 19), mine[1]) if nice == 19 else (mine[0], os.SCHED_IDLE)
    assert len(seen) == len(good) and set(seen) == {want}
    assert in_tail and set(in_tail) == {want}
    assert set(in_model) == {mine} and _nice_and_policy() == mine
    # decode_nice=0 leaves every thread as it was
    seen.clear()
    list(overlapped(good, load, emb.embed_batch, batch=2, decode_nice=0))
    assert set(seen) == {mine}


@linux_priorities
def test_the_decode_priority_follows_the_environment_and_a_bad_value_is_named(files, monkeypatch):
    from dn2.runtime.errors import Dn2Error
    from dn2.runtime.pipeline import DECODE_NICE

    if not _can_lower(19):
        pytest.skip("this OS or test run cannot lower a thread to nice 19")
    model, paths, bad = files
    emb = Embedder(model, batch_size=2)
    good = [p for p in paths if p not in bad][:4]
    mine = _nice_and_policy()
    seen = []

    def load(p):
        seen.append(_nice_and_policy()[0])
        return emb.load_file(p)

    for env, want in (("", max(mine[0], DECODE_NICE)), ("0", mine[0]), ("7", max(mine[0], 7))):
        monkeypatch.setenv("DN2_DECODE_NICE", env)
        seen.clear()
        assert sum(len(b.items) for b in overlapped(good, load, emb.embed_batch, batch=2)) == 4
        assert set(seen) == {want}, env
    for wrong in ("-3", "20", "\u00b2", "high"):  # "\u00b2".isdigit() is True in Python
        monkeypatch.setenv("DN2_DECODE_NICE", wrong)
        with pytest.raises(
            Dn2Error,
            match=f"DN2_DECODE_NICE: expected a nice value 0-19 or 'idle', found {wrong!r}",
        ):
            list(overlapped(good, load, emb.embed_batch, batch=2))
    with pytest.raises(Dn2Error, match="decode_nice: expected a nice value 0-19 or 'idle'"):
        list(overlapped(good, load, emb.embed_batch, batch=2, decode_nice=25))
    # workers=0 starts no pool: a bad setting is not read there
    assert len(list(overlapped(good, emb.load_file, emb.embed_batch, batch=2, workers=0))) == 2
