"""The bad-input corpus (tests/badfiles.py): every file is refused with a clear message or decoded
correctly, and in a batch the good files are still embedded."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dn2.runtime.embedder import Embedder
from dn2.runtime.errors import ImageError
from dn2.runtime.images import find_images, read_image

from badfiles import CASE_NAMES, build_corpus, mixed_folder
from tiny_model import build_tiny_model

pytest.importorskip("PIL", reason="building the corpus needs Pillow")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(folder)
    yield folder, cases
    for c in cases:  # let pytest clean up the chmod 000 file
        if os.path.lexists(c.path) and not os.path.islink(c.path):
            os.chmod(c.path, 0o700)


def test_corpus_is_big_enough(corpus):
    _, cases = corpus
    assert sum(c.refused for c in cases) >= 12 and sum(not c.refused for c in cases) >= 10
    assert len(cases) > 100 and [c.name for c in cases] == list(CASE_NAMES)


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_each_file_is_refused_clearly_or_decoded_correctly(corpus, case_name):
    _, cases = corpus
    case = next(c for c in cases if c.name == case_name)
    if case.skip:
        pytest.skip(case.skip)
    if case.either:  # refused with a clear message, or a whole BGR image
        try:
            img = read_image(case.path)
        except ImageError as exc:
            assert str(exc).startswith(f"{case.path}: expected ") and ", found " in str(exc)
        else:
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            assert min(img.shape[:2]) >= 8
    elif case.refused:
        with pytest.raises(ImageError) as e:
            read_image(case.path)
        msg = str(e.value)
        assert msg.startswith(f"{case.path}: expected "), msg
        assert ", found " in msg, msg
        for s in case.says:
            assert s in msg, f"{case.name}: {s!r} not in {msg!r}"
    else:
        img = read_image(case.path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.flags["C_CONTIGUOUS"]
        case.check(img)


def test_a_batch_with_every_bad_file_still_embeds_the_good_ones(corpus, tmp_path):
    folder, cases = corpus
    model = build_tiny_model(tmp_path / "tiny.onnx", input_size=32, dim=8)
    runnable = [c for c in cases if not c.skip]
    paths = [c.path for c in runnable]
    res = Embedder(model, batch_size=4).embed_paths(paths)
    good = [c.path for c in runnable if not c.refused and not c.either]
    bad = {c.path: c for c in runnable if c.refused}
    assert set(good) <= set(res.paths) and res.embeddings.shape == (len(res.paths), 8)
    assert np.isfinite(res.embeddings).all()
    assert set(bad) <= {p for p, _ in res.errors}
    assert len(res.paths) + len(res.errors) == len(paths)  # every file answered once
    for p, msg in res.errors:
        assert p not in bad or all(s in msg for s in bad[p].says), msg


def test_find_images_on_the_corpus_folder_reports_instead_of_failing(corpus, tmp_path):
    folder, cases = corpus
    images, others = mixed_folder(tmp_path / "mixed")
    files, problems = find_images([str(folder), str(tmp_path / "mixed")])
    reported = dict(problems)
    for p in others:
        assert "expected an image file" in reported[p]
    assert str(folder / "actually_png.txt") in reported  # by name inside folders
    assert set(images) <= set(files)
    # what find_images lets through, read_image judges by content: the batch goes on
    assert str(folder / "notes.jpg") in files and str(folder / "bomb.png") in files


def test_the_corpus_through_fit_score_and_the_watch_folder_source(corpus, tmp_path):
    import json
    import subprocess
    import sys
    import threading

    from dn2.runtime.watch.reader import Backoff, FrameQueue, Reader
    from dn2.runtime.watch.sources import IMAGE_SUFFIXES, open_source

    folder, cases = corpus
    runnable = [c for c in cases if not c.skip]
    model = build_tiny_model(tmp_path / "tiny.onnx", input_size=32, dim=8)
    exe = os.path.dirname(sys.executable)
    # fit: bad files skipped and counted, the good ones make the bundle
    r = subprocess.run(
        [
            os.path.join(exe, "dn2-fit"),
            str(model),
            str(folder),
            "--output",
            str(tmp_path / "b"),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-800:]
    m = json.loads((tmp_path / "b" / "dn2.json").read_text())
    assert m["fit"]["images"] >= sum(not c.refused and not c.either for c in runnable)
    # score: one line per input, in order, each bad one with its reason
    paths = [c.path for c in runnable]
    r = subprocess.run(
        [os.path.join(exe, "dn2-score"), str(tmp_path / "b"), *paths, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [x["path"] for x in rows] == paths
    for c, x in zip(runnable, rows):
        if c.refused:
            assert x["score"] is None and "expected" in x["error"], x
        elif not c.either:
            assert x["score"] is not None, x
    # the watch folder source: every image-named file is a frame or a reported skip
    flat = tmp_path / "flat"
    flat.mkdir()
    named = [c for c in runnable if os.path.splitext(c.path)[1].lower() in IMAGE_SUFFIXES]
    for i, c in enumerate(named):
        os.symlink(c.path, flat / f"{i:04d}{os.path.splitext(c.path)[1]}")
    q, stop = FrameQueue(10_000), threading.Event()
    rd = Reader(
        open_source(str(flat)),
        q,
        stop,
        backoff=Backoff(initial=0.01, max_delay=0.02, max_attempts=1),
    )
    rd.start()
    frames = []
    while (batch := q.get_batch(64, timeout=0.5)) is not None:
        frames.extend(batch)
    rd.join(30)
    assert not rd.is_alive() and rd.stats.error is None
    assert len(frames) + rd.stats.skipped_items == len(named)
    good = {i for i, c in enumerate(named) if not c.refused and not c.either}
    assert good <= {f.index for f in frames}
