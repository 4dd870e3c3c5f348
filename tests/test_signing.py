"""Signed bundles: a bundle altered in any byte after signing is refused, an unsigned one is
refused when a key is trusted, and nothing changes where no key is configured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dn2.runtime.detector import Detector
from dn2.runtime.errors import BundleError
from dn2.runtime.fit import fit_bundle
from dn2.runtime.signing import SIGNATURE, generate_keypair, sign_bundle, verify_bundle

from tiny_model import make_tiny_model

pytest.importorskip("cryptography", reason="pip install 'dn2[sign]'")
BIN = os.path.dirname(sys.executable)


def run(*args, env=None):
    return subprocess.run(
        [os.path.join(BIN, args[0]), *map(str, args[1:])],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, **(env or {})),
    )


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("sign")
    model = make_tiny_model(d / "tiny.onnx", dim=8)
    x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    bundle = fit_bundle(model, d / "bundle", embeddings=x, progress=False)
    r = run("dn2-sign", "--keygen", d / "key")
    assert r.returncode == 0, r.stderr
    assert (os.stat(d / "key").st_mode & 0o777) == 0o600
    r = run("dn2-sign", bundle, "--key", d / "key")
    assert r.returncode == 0 and (bundle / SIGNATURE).is_file(), r.stderr
    return d, bundle, d / "key.pub"


def test_signed_bundle_loads_with_its_key(signed, tmp_path):
    d, bundle, pub = signed
    assert Detector.load(bundle, trusted_key=pub, load_model=False).k == 2
    r = run("dn2-sign", bundle, "--verify", pub)
    assert r.returncode == 0 and "signature valid" in r.stdout
    np_img = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(np_img), np.full((40, 40, 3), 100, np.uint8))
    r = run("dn2-score", bundle, np_img, "--trusted-key", pub)
    assert r.returncode == 0, r.stderr
    r = run("dn2-score", bundle, np_img, env={"DN2_TRUSTED_KEY": str(pub)})
    assert r.returncode == 0, r.stderr


def test_every_byte_of_every_file_is_covered(signed, tmp_path):
    # flip bytes of each file of the signed bundle (manifest, model, bank, report and the
    # signature itself): every byte of the text files (where a change could be "harmless"
    # formatting) and of the first and last 256 bytes and 400 spread offsets of the binary
    # ones (covered by their sha256 as a whole): every single alteration is refused
    d, bundle, pub = signed
    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    tried = 0
    for name in sorted(os.listdir(work)):
        p = work / name
        raw = p.read_bytes()
        n = len(raw)
        offsets = (
            range(n)
            if name.endswith((".json", ".sig")) or n <= 912
            else sorted(
                set(range(256))
                | set(range(n - 256, n))
                | set(np.linspace(0, n - 1, 400, dtype=int))
            )
        )
        for i in offsets:
            b = bytearray(raw)
            b[i] ^= 0x01
            p.write_bytes(bytes(b))
            with pytest.raises(BundleError):
                verify_bundle(work, pub)
            tried += 1
        p.write_bytes(raw)
    verify_bundle(work, pub)  # and restored, it verifies again
    assert tried > 3000


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda b: (b / SIGNATURE).unlink(), "found an unsigned bundle"),
        (lambda b: (b / "extra.txt").write_text("x"), "extra.txt: expected only signed files"),
        (lambda b: (b / "fit_report.json").unlink(), "fit_report.json: signed, found it missing"),
        (lambda b: (b / SIGNATURE).write_text("{"), "expected a dn2 signature file"),
        (
            lambda b: _edit(b, lambda m: m["threshold"].update(value=9.0)),
            "dn2.json changed after signing: threshold.value: signed",
        ),
        (lambda b: _edit(b, lambda m: m["score"].update(k=1)), "score.k: signed 2, found 1"),
        (lambda b: _edit(b, lambda m: m.pop("fit")), "fit (removed)"),
        (
            lambda b: (b / "bank.npy").write_bytes(
                (b / "bank.npy").read_bytes()[:-4] + b"\0\0\0\0"
            ),
            "bank.npy changed after signing",
        ),
    ],
)
def test_alterations_name_what_changed(signed, tmp_path, edit, says):
    d, bundle, pub = signed
    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    edit(work)
    with pytest.raises(BundleError) as e:
        Detector.load(work, trusted_key=pub, load_model=False)
    assert says in str(e.value)


def _edit(b, fn):
    m = json.loads((b / "dn2.json").read_text())
    fn(m)
    (b / "dn2.json").write_text(json.dumps(m, indent=1, sort_keys=True))


def test_another_key_and_unsigned_bundles_are_refused_with_exit_2(signed, tmp_path):
    d, bundle, pub = signed
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 40, 3), 100, np.uint8))
    generate_keypair(tmp_path / "other")
    r = run("dn2-score", bundle, tmp_path / "a.png", "--trusted-key", tmp_path / "other.pub")
    assert r.returncode == 2 and "expected a signature by the trusted key" in r.stderr
    unsigned = tmp_path / "u"
    shutil.copytree(bundle, unsigned)
    (unsigned / SIGNATURE).unlink()
    # no key configured: an unsigned bundle works as before
    assert Detector.load(unsigned, load_model=False).k == 2
    r = run(
        "dn2-watch", unsigned, "--source", tmp_path, "--headless", env={"DN2_TRUSTED_KEY": str(pub)}
    )
    assert r.returncode == 2 and "found an unsigned bundle" in r.stderr, r.stderr
    r = run(
        "dn2-watch",
        d / "tiny.onnx",
        "--source",
        tmp_path,
        "--learn",
        "20f",
        "--headless",
        "--trusted-key",
        pub,
    )
    assert r.returncode == 2 and "--learn fits an unsigned bundle" in r.stderr
    # a fresh fit over a signed bundle replaces it with an unsigned one: refused until re-signed
    x = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    refit = tmp_path / "r"
    shutil.copytree(bundle, refit)
    fit_bundle(d / "tiny.onnx", refit, embeddings=x, progress=False)
    with pytest.raises(BundleError, match="unsigned"):
        Detector.load(refit, trusted_key=pub, load_model=False)
    sign_bundle(refit, d / "key")
    assert Detector.load(refit, trusted_key=pub, load_model=False).k == 2


def test_keys_that_are_not_keys_are_clear_errors(signed, tmp_path):
    d, bundle, pub = signed
    (tmp_path / "junk.pem").write_text("not a key")
    r = run("dn2-sign", bundle, "--key", tmp_path / "junk.pem")
    assert r.returncode == 2 and "expected an unencrypted Ed25519 private key" in r.stderr
    r = run("dn2-sign", bundle, "--verify", tmp_path / "missing.pub")
    assert r.returncode == 2 and "found no such path" in r.stderr
    r = run("dn2-sign", "--keygen", d / "key")
    assert r.returncode == 2 and "found one already" in r.stderr
