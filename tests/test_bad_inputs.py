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
    assert len(cases) >= 15 and [c.name for c in cases] == list(CASE_NAMES)


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_each_file_is_refused_clearly_or_decoded_correctly(corpus, case_name):
    _, cases = corpus
    case = next(c for c in cases if c.name == case_name)
    if case.skip:
        pytest.skip(case.skip)
    if case.refused:
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
    good = [c.path for c in runnable if not c.refused]
    bad = {c.path: c for c in runnable if c.refused}
    assert res.paths == good and res.embeddings.shape == (len(good), 8)
    assert np.isfinite(res.embeddings).all()
    assert [p for p, _ in res.errors] == [c.path for c in runnable if c.refused]
    for p, msg in res.errors:
        assert all(s in msg for s in bad[p].says), msg


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
