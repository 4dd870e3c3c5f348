"""Faults at the edges of the commands: outputs that cannot be written, inputs that are not
what they seem (FIFOs, devices, names that are not UTF-8, paths over PATH_MAX), duplicate and
ordered inputs, and a bundle replaced while it is read. Real files, real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import cv2
import numpy as np
import pytest

from dn2.runtime.bundle import MANIFEST, check_output, load_bundle
from dn2.runtime.bundleswap import clean_stale, exchange
from dn2.runtime.errors import BundleError, ImageError
from dn2.runtime.fit import fit_bundle
from dn2.runtime.images import read_image
from dn2.runtime.watch.sources import SourceError, open_source

from tiny_model import make_tiny_model

BIN = os.path.dirname(sys.executable)


def cli(*args, env=None, timeout=120):
    e = dict(os.environ, **(env or {}))
    return subprocess.run(
        [os.path.join(BIN, args[0]), *args[1:]], capture_output=True, timeout=timeout, env=e
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("io")
    model = make_tiny_model(d / "tiny.onnx", dim=16)
    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(imgs / f"{i:02d}.png"), (rng.random((40, 40, 3)) * 255).astype(np.uint8))
    bundle = fit_bundle(model, d / "bundle", images=[str(imgs)], progress=False)
    return d, model, imgs, bundle


def test_fit_checks_its_output_before_embedding(work, tmp_path):
    d, model, imgs, _ = work
    (tmp_path / "afile").write_text("x")
    r = cli("dn2-fit", str(model), str(imgs), "--output", str(tmp_path / "afile" / "b"))
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err
    assert "expected a folder to write into" in err and "afile" in err
    assert "embed" not in err  # refused before any image was embedded
    r = cli("dn2-fit", str(model), str(imgs), "--output", "/proc/dn2-cannot-write-here")
    assert r.returncode == 2 and "expected a writable folder" in r.stderr.decode()
    with pytest.raises(
        BundleError, match="expected a bundle directory to create, found a regular file"
    ):
        check_output(tmp_path / "afile")


def test_model_and_source_that_are_fifos_or_devices_say_so(work, tmp_path):
    d, model, imgs, bundle = work
    os.mkfifo(tmp_path / "pipe")
    r = cli(
        "dn2-fit", str(tmp_path / "pipe"), str(imgs), "--output", str(tmp_path / "x"), timeout=30
    )
    assert r.returncode == 2 and "found a FIFO (named pipe)" in r.stderr.decode()
    r = cli("dn2-fit", "/dev/zero", str(imgs), "--output", str(tmp_path / "x"), timeout=30)
    assert r.returncode == 2 and "found a character device" in r.stderr.decode()
    for spec, says in [
        (str(tmp_path / "pipe"), "found a FIFO"),
        ("/dev/zero", "found a character device"),
        ("99999999999999999999", "expected a camera index in [0, 9999]"),
        ("/x/" + "a" * 5000, "longer than PATH_MAX"),
    ]:
        with pytest.raises(SourceError) as e:
            open_source(spec)
        assert says in str(e.value), str(e.value)
    r = cli("dn2-watch", str(bundle), "--source", "99999999999999999999", "--headless", timeout=60)
    assert r.returncode == 2 and b"Traceback" not in r.stderr and b"[0, 9999]" in r.stderr


def test_score_answers_every_input_once_in_order(work):
    d, model, imgs, bundle = work
    a, b = str(imgs / "03.png"), str(imgs / "01.png")
    dot = os.path.join(".", os.path.relpath(a))
    long = "/" + "x" * 5000
    r = cli("dn2-score", str(bundle), a, a, dot, "nowhere.png", b, long, "--json")
    rows = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [x["path"] for x in rows] == [a, a, dot, "nowhere.png", b, long]
    assert rows[0]["score"] == rows[1]["score"] == rows[2]["score"] is not None
    assert "no such path" in rows[3]["error"] and "PATH_MAX" in rows[5]["error"]
    assert r.returncode == 1


def test_score_text_output_survives_names_that_are_not_utf8(work, tmp_path):
    d, model, imgs, bundle = work
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.png"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as f:
        f.write((imgs / "02.png").read_bytes())
    good = str(imgs / "02.png")
    r = subprocess.run(
        [os.path.join(BIN, "dn2-score"), str(bundle), good, raw, good],
        capture_output=True,
        timeout=120,
        env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"),
    )
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert len(lines) == 3 and lines[1].startswith(raw + b"\t")  # the name's own bytes
    assert lines[0].split(b"\t")[1] == lines[1].split(b"\t")[1] == lines[2].split(b"\t")[1]


def test_a_fifo_swapped_in_for_an_image_never_blocks_the_reader(tmp_path):
    # A symlink flips between a real image and a FIFO while the reader reads it: whatever it
    # finds at open time, it returns the image or refuses the FIFO; it never waits on it.
    img = tmp_path / "real.png"
    cv2.imwrite(str(img), np.full((32, 32, 3), 90, np.uint8))
    os.mkfifo(tmp_path / "pipe")
    code = textwrap.dedent(f"""
        import os, threading
        from dn2.runtime.images import read_image
        from dn2.runtime.errors import ImageError
        link, stop = {str(tmp_path / "link.png")!r}, threading.Event()
        def flip():
            i = 0
            while not stop.is_set():
                tmp = link + ".new"
                os.symlink({str(tmp_path)!r} + ("/pipe" if i % 2 else "/real.png"), tmp)
                os.replace(tmp, link)
                i += 1
        os.symlink({str(img)!r}, link)
        t = threading.Thread(target=flip, daemon=True); t.start()
        import time
        ok = fifo = n = 0
        # At least 3000 reads, and on until both kinds were met (the flipping thread may not
        # get the GIL for a while), bounded at 60 s.
        t_end = time.monotonic() + 60
        while (n < 3000 or not (ok and fifo)) and time.monotonic() < t_end:
            n += 1
            try:
                read_image(link); ok += 1
            except ImageError as e:
                assert "FIFO" in str(e) or "no such file" in str(e), str(e)
                fifo += 1
        stop.set()
        print(ok, fifo, n)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    ok, fifo, n = map(int, r.stdout.split())
    assert ok > 0 and fifo > 0 and ok + fifo == n
    with pytest.raises(ImageError, match="found a FIFO"):
        read_image(tmp_path / "pipe")


def test_bundle_replacement_leaves_a_whole_bundle_at_every_instant(work, tmp_path):
    d, model, imgs, _ = work
    out = tmp_path / "b"
    fit_bundle(model, out, images=[str(imgs)], progress=False, k=2)
    for name in ("x", "y"):  # renameat2 RENAME_EXCHANGE works on this file system (ext4)
        (tmp_path / name).mkdir()
        (tmp_path / name / name).write_text(name)
    assert exchange(tmp_path / "x", tmp_path / "y")
    assert (tmp_path / "x" / "y").is_file() and (tmp_path / "y" / "x").is_file()
    for name in ("x", "y"):
        (tmp_path / name / ("y" if name == "x" else "x")).unlink()
        (tmp_path / name).rmdir()
    stop, seen, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                seen.add(load_bundle(out).manifest.score.k)
            except BundleError as exc:
                errors.append(str(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(6):
            fit_bundle(model, out, images=[str(imgs)], progress=False, k=2 + i % 2)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert seen == {2, 3}
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_stale_temp_folders_of_dead_writers_are_removed(work, tmp_path):
    d, model, imgs, _ = work
    out = tmp_path / "b"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".b.tmp-{dead}-0123abcd"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    alive = tmp_path / f".b.tmp-{os.getpid()}-89abcdef"  # a writer still running: kept
    alive.mkdir()
    other = tmp_path / f".c.tmp-{dead}-0123abcd"  # another target's: not ours to judge here
    other.mkdir()
    fit_bundle(model, out, images=[str(imgs)], progress=False)
    assert not stale.exists() and alive.exists() and other.exists()
    assert clean_stale(tmp_path / "c") == [str(other)]
    m = json.loads((out / MANIFEST).read_text())
    assert m["fit"]["images"] == 12 and m["bank"]["n"] == 24  # + a camera variant of each


def test_a_fifo_in_place_of_the_bundles_model_is_named_not_read(work, tmp_path):
    import shutil

    d, model, imgs, bundle = work
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "model.onnx").unlink()
    os.mkfifo(b / "model.onnx")
    r = cli("dn2-score", str(b), str(imgs / "01.png"), timeout=60)
    assert r.returncode == 2 and b"found a FIFO (named pipe)" in r.stderr, r.stderr
