"""The bundle-mutation fuzzer (dn2.tools.faults.fuzz) over exact and HNSW bundles: every
manifest field wrong-typed, missing or extreme, every file flipped, truncated, swapped or
replaced by another format, with the digests kept or rewritten as an attacker would. Each case
runs in a child process: none may crash natively or hang; each exits 0 (harmless) or 2 with a
one-line reason, and no damage to a field the runtime reads is accepted."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dn2.runtime.fit import fit_bundle
from dn2.tools.faults.fuzz import SCHEMA_FIELDS, fuzz_bundle

from tiny_model import make_tiny_model

HARMLESS_VALUES = {"true", "zero", "huge", "float-huge", "int64-overflow"}  # valid values


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    model = make_tiny_model(d / "tiny.onnx", dim=16)
    x = np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32)
    img = d / "a.png"
    cv2.imwrite(str(img), (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8))
    bundles = {
        kind: fit_bundle(
            model,
            d / kind,
            embeddings=x,
            index=kind,
            progress=False,
            hnsw={"M": 8, "ef_construction": 40, "ef": 16},
        )
        for kind in ("exact", "hnsw")
    }
    return bundles, img


def _accepted_is_harmless(case: str) -> bool:
    kind, target, mutation = case.split(":", 2)
    rewrote = mutation.endswith(" +digests")
    mutation = mutation.replace(" +digests", "")
    if kind == "file":  # only with rewritten digests, where one flipped byte leaves valid data
        # (a weight, a vector, a protobuf string): memory-safe, and caught by a signature
        # the stored normal rows (embeddings.*) are read by fit --append only, which checks
        # their shapes itself; scoring never opens them, like fit_report.json
        records = ("fit_report.json", "embeddings.json", "embeddings.npy")
        return rewrote and (target in records or mutation.startswith("flip-"))
    sec, _, field = target.partition(".")
    if field in SCHEMA_FIELDS.get(sec, ()):
        return (
            mutation in HARMLESS_VALUES
            and (field in ("l2norm", "jpeg_draft", "value"))
            or (field == "jpeg_draft" and mutation == "missing")
        )
    return sec in ("fit", "group") and mutation in ("missing", "list", "string")


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_every_mutation_is_refused_in_one_line_or_harmless(work, kind):
    bundles, img = work
    results = fuzz_bundle(bundles[kind], img, timeout=120)
    assert len(results) > 250
    crashes = [r for r in results if r.crash or r.hang]
    assert not crashes, crashes[:3]
    other = [r for r in results if r.rc not in (0, 2)]
    assert not other, other[:3]
    for r in results:
        if r.rc == 2:
            assert r.lines == 1 and "error: " in r.message and "Traceback" not in r.message, r
    accepted = [r.case for r in results if r.rc == 0]
    wrong = [c for c in accepted if not _accepted_is_harmless(c)]
    assert not wrong, wrong
    assert sum(r.rc == 2 for r in results) > 0.8 * len(results)
