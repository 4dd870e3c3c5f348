"""The typed manifest: a schema-1 bundle written by the code before it still loads and scores
the same, a round trip through dn2.json is lossless, and nothing outside the bundle/manifest
modules reads the manifest by string keys (an AST check over the package)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dn2.runtime import threshold_cli
from dn2.runtime.bundle import MANIFEST, load_bundle, read_manifest
from dn2.runtime.config import FitConfig
from dn2.runtime.detector import Detector
from dn2.runtime.errors import BundleError
from dn2.runtime.manifest import SCHEMA_VERSION, Manifest, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
V1 = DATA / "bundle_v1"  # written by dn2.runtime.fit.fit_bundle under schema 1 (hnsw + groups)


@pytest.fixture
def v1(tmp_path):
    out = tmp_path / "v1"
    shutil.copytree(V1, out)
    return out


def test_a_schema_1_bundle_loads_converted_and_scores_as_before(v1):
    raw = json.loads((v1 / MANIFEST).read_text())
    assert raw["schema_version"] == 1 and "mode" not in raw["score"]  # really the old format
    want = json.loads((DATA / "bundle_v1_expected.json").read_text())
    det = Detector.load(v1)  # the real model through onnxruntime, the real hnswlib bank
    m = det.manifest
    assert isinstance(m, Manifest) and m.converted_from == 1
    assert (m.score.mode, m.score.color, m.score.jpeg_draft) == ("global", "color", False)
    assert m.model.outputs is None  # schema 1 did not record the graph's outputs
    assert m.bank.kind == "hnsw" and m.bank.hnsw == {"M": 8, "ef_construction": 40, "ef": 16,
                                                     "seed": 100}  # fmt: skip
    assert m.fit_config == FitConfig.from_mapping(raw["fit"]["config"])
    assert det.threshold == want["threshold"] == raw["threshold"]["value"]
    assert det.group_threshold == want["group_threshold"] and m.group.sizes == (3, 3)
    q = np.asarray(want["queries"], np.float32)
    # the same bank file and the same float32 arithmetic: equal to float32 rounding
    np.testing.assert_allclose(det.score_embeddings(q), want["scores"], rtol=1e-6)
    assert det.embedder.embed_batch(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 16)


def test_a_schema_1_bundle_rewritten_becomes_schema_2_losslessly(v1, tmp_path):
    old = read_manifest(v1)
    out = tmp_path / "v2"
    assert threshold_cli.main([str(v1), "--fpr", "0.1", "-o", str(out)]) == 0
    raw = json.loads((out / MANIFEST).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 2
    assert raw["score"]["mode"] == "global" and raw["score"]["combine"] == "max"
    new = read_manifest(out)
    assert new.converted_from is None and new.threshold.value < old.threshold.value
    assert new.replace(threshold=old.threshold) == old.replace(converted_from=None)
    # the fit record keeps every field of the old one
    assert set(raw["fit"]) >= set(json.loads((v1 / MANIFEST).read_text())["fit"])


def test_round_trip_through_json_is_exact(v1):
    m = read_manifest(v1).replace(converted_from=None)
    again = parse_manifest(json.loads(json.dumps(m.to_dict())), "round trip")
    assert again == m and again.to_dict() == m.to_dict()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(schema_version=0), r"expected schema_version 2 .*refit it with"),
        (lambda m: m.update(schema_version="1"), r"found '1'"),
        (lambda m: m["fit"]["config"].update(k=0), r"fit.config: k: expected >= 1, found 0"),
        (lambda m: m["threshold"].update(scores={"n": 5}), r"threshold.scores.tail"),
        (lambda m: m["group"].update(sizes=[3]), r"group.sizes: expected \[fewest, most\]"),
    ],
)
def test_unreadable_manifests_are_refused_saying_what_and_how(v1, edit, message):
    raw = json.loads((v1 / MANIFEST).read_text())
    edit(raw)
    (v1 / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=message):
        load_bundle(v1)


def test_an_old_fit_config_field_does_not_make_a_schema_1_bundle_unreadable(v1):
    raw = json.loads((v1 / MANIFEST).read_text())
    raw["fit"]["config"]["retired_option"] = 1
    (v1 / MANIFEST).write_text(json.dumps(raw))
    assert load_bundle(v1).manifest.fit_config.k == 2


# ---- nothing outside the bundle / manifest modules reads the manifest by string keys ----

OWNERS = {
    "runtime/bundle.py",
    "runtime/manifest.py",
    "runtime/manifest_check.py",
    "runtime/manifest_fit.py",
    "runtime/manifest_parts.py",
    "runtime/manifest_signals.py",
    "runtime/signing.py",  # digests dn2.json's bytes; diffs the signed copy field by field
    "tools/faults/fuzz.py",  # mutates the raw dn2.json on purpose, to test the reader
}
SECTIONS = {
    "model": {"file", "sha256", "arch", "dim", "input", "weights", "precision", "outputs"},
    "bank": {"kind", "file", "sha256", "n", "dim", "metric", "M", "ef", "ef_construction"},
    "score": {"k", "l2norm", "jpeg_draft", "color", "mode", "combine", "reduction"},
    "threshold": {"value", "quantiles", "scores", "method", "calibration", "candidates"},
    "group": {"threshold", "bank", "k", "pooling", "sizes", "size", "cov_trace_threshold"},
    "signals": {"patch", "global"},
    "fit": {"config", "images", "duplicates", "augment", "color", "source"},
}


def _key(node):
    s = node.slice if isinstance(node, ast.Subscript) else None
    return s.value if isinstance(s, ast.Constant) and isinstance(s.value, str) else None


def _mentions_manifest(node, bound=()) -> bool:
    return any(
        (isinstance(n, ast.Name) and ("manifest" in n.id.lower() or n.id in bound))
        or (isinstance(n, ast.Attribute) and "manifest" in n.attr.lower())
        or (isinstance(n, ast.Constant) and n.value == "manifest")  # getattr(d, "manifest")
        for n in ast.walk(node)
    )


def violations(source: str):
    """(line, what) for each place that reads a manifest as a dict."""
    tree = ast.parse(source)
    bound = {  # names given a manifest: m = read_manifest(p), m = bundle.manifest, ...
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _mentions_manifest(node.value)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    out = []
    for node in ast.walk(tree):
        key = _key(node)
        if key is not None and _mentions_manifest(node.value, bound):
            out.append((node.lineno, f"manifest[{key!r}]"))
        elif key is not None and key in set().union(*SECTIONS.values()):
            outer = _key(node.value) if isinstance(node.value, ast.Subscript) else None
            if outer in SECTIONS and key in SECTIONS[outer]:
                out.append((node.lineno, f"[{outer!r}][{key!r}]"))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and _mentions_manifest(node.func.value, bound)
        ):
            out.append((node.lineno, "manifest.get(...)"))
        if isinstance(node, ast.Constant) and node.value == "dn2.json":
            out.append((node.lineno, "reads dn2.json itself"))
    return out


def test_the_check_catches_dict_reads():
    assert violations("t = det.manifest['threshold']['value']")
    assert violations("m = b.manifest\nk = m['score']['k']")
    assert violations("g = (self.manifest or {}).get('group')")
    assert violations("raw = json.loads((p / 'dn2.json').read_text())")
    assert violations("m = read_manifest(src)\nth = dict(m['threshold'])")
    assert violations("q = (getattr(d, 'manifest', None) or {}).get('threshold')")
    assert not violations("t = det.manifest.threshold.value\nrow = {'score': 1}['score']")


def test_no_module_outside_the_bundle_reads_the_manifest_by_string_keys():
    found = []
    for top in ("runtime", "export", "tools", "cli"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in OWNERS:
                continue
            found += [f"{rel}:{line}: {what}" for line, what in violations(path.read_text())]
    assert not found, "read the typed Manifest's attributes instead:\n" + "\n".join(found)
