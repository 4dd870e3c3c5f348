"""Batches split over one-thread onnxruntime sessions, and the CPU engines study that
measured it: real exports (ResNet18, random weights, 64 px), real sessions."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="exports the models: pip install 'dn2[export]'")
pytest.importorskip("scipy", reason="the gate's Spearman: pip install 'dn2[export]'")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """The study's work dir with its frames and the two exports it reuses."""
    from dn2.tools.bench.frames import make_frames
    from dn2.tools.bench.models import export_models

    work = tmp_path_factory.mktemp("cpu-engines")
    make_frames(work / "frames", 16, (1280, 720))
    export_models("resnet18", "none", 64, work, ("fp32", "int8"), str(work / "frames"), print)
    return work


def _frames(work, size):
    from dn2.runtime.images import prepare, read_image
    from dn2.runtime.modelmeta import ResizeRule

    rule = ResizeRule.for_input_size(size)
    return np.stack(
        [prepare(read_image(str(p)), rule) for p in sorted((work / "frames").iterdir())]
    )


def test_batches_split_by_default_and_give_the_unsplit_embeddings(study_dir):
    from dn2.runtime.embedder import Embedder

    int8 = str(study_dir / "resnet18-64-int8.onnx")
    fp32 = str(study_dir / "resnet18-64-fp32.onnx")
    split = Embedder(int8, providers="cpu", threads=2, batch_size=8)
    one = Embedder(int8, providers="cpu", threads=2, batch_size=8, cpu_split=False)
    assert split.backend.split == 2 and one.backend.split == 0
    assert Embedder(fp32, providers="cpu", threads=2, batch_size=8).backend.split == 2
    assert Embedder(fp32, providers="cpu", threads=2, cpu_split=False).backend.split == 0
    assert split.backend.split_threads == [1, 1]
    # one thread or one image per batch: nothing to split; more threads: still two sessions
    # (two extra copies of the weights at most), the threads shared out
    assert Embedder(int8, providers="cpu", threads=1, batch_size=8).backend.split == 0
    assert Embedder(int8, providers="cpu", threads=2, batch_size=1).backend.split == 0
    three = Embedder(int8, providers="cpu", threads=3, batch_size=8).backend
    assert three.split == 2 and three.split_threads == [2, 1]
    np.testing.assert_allclose(
        three.run(_frames(study_dir, 64)[:4])["embedding"],
        one.embed_batch(_frames(study_dir, 64)[:4]),
        rtol=1e-5,
        atol=1e-6,
    )
    x = _frames(study_dir, 64)
    for n in (1, 3, 8, 16):  # one image (never split), odd halves, a full and two chunks
        a, b = split.embed_batch(x[:n]), one.embed_batch(x[:n])
        assert a.shape == (n, 512) and np.isfinite(a).all()
        # the same integer kernels on the same images; only float summation order in the
        # pooling may differ with the thread count (measured: identical on ResNet101)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[0], a[1])  # different photos, different embeddings
    split.backend.close()
    assert split.backend._parts == [] and split.backend._pool is None


def test_cpu_engines_study_runs_every_row_and_agrees_with_itself(study_dir, tmp_path, capsys):
    from dn2.tools.studies.cpu_engines import main

    out = tmp_path / "study.json"
    argv = ["--arch", "resnet18", "--input-size", "64", "--work-dir", str(study_dir)]
    argv += ["--frames", "16", "--rounds1", "2", "--rounds8", "1", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    rows = {(r["engine"], r["batch"]): r for r in res["rows"]}
    for name in ("torch-eager", "ort-fp32", "ort-fp32-spin", "ort-int8", "ort-int8-daz"):
        assert (name, 1) in rows and (name, 8) in rows
    assert ("ort-int8-split", 8) in rows and ("ort-int8-split", 1) not in rows
    assert (
        rows["ort-fp32", 8]["x_baseline"] == 1.0 and rows["ort-int8", 1]["baseline"] == "ort-int8"
    )
    assert all(r["img_per_s"] > 0 for r in res["rows"])
    acc = res["agreement"]
    # the same fp32 graph in another onnxruntime session / in torch: float rounding only
    assert acc["ort-fp32"]["cos_min"] == 1.0 and acc["torch-eager"]["cos_min"] > 0.9999
    # int8 passed the export gate on these frames: its own tolerance (cosine >= 0.99)
    assert 0.99 <= acc["ort-int8"]["cos_min"] < 1.0
    assert acc["ort-int8-split"] == acc["ort-int8"]  # the split computes the same embeddings
    ops = dict((o, n) for o, n in res["ops"]["int8"])
    assert ops.get("com.microsoft:QLinearConv") == 20  # every conv of ResNet18 runs in int8
    try:
        import openvino  # noqa: F401
    except ImportError:
        assert ("ov-fp32", 8) not in rows and any("openvino" in n for n in res["notes"])
    else:
        assert ("ov-int8-2streams", 8) in rows and acc["ov-fp32"]["cos_min"] > 0.9999
        assert acc["ov-int8"]["cos_min"] > 0.98  # OpenVINO's own int8 kernels, same QDQ graph
    printed = capsys.readouterr().out
    assert "| ort-int8-split | 8 |" in printed and "onnxruntime optimised int8 graph" in printed


def test_profile_of_the_int8_graph_per_op_type(study_dir):
    """onnxruntime's profiler over the int8 export: the convolutions are QLinearConv, the
    channel-last preprocessing is a Gemm (no Slice, Mul or Add broadcast over 3 channels), and the
    per-op shares add up."""
    from dn2.tools.studies.ort_profile import profile

    int8 = str(study_dir / "resnet18-64-int8.onnx")
    r = profile(int8, np.ascontiguousarray(_frames(study_dir, 64)[:2]), 1, 2)
    ops = {o["op"]: o for o in r["ops"]}
    assert ops["QLinearConv"]["nodes"] == 20  # every ResNet18 convolution int8
    assert "Gemm" in ops and not {"Slice", "Mul", "Add"} & set(ops)
    assert sum(o["share"] for o in r["ops"]) == pytest.approx(1.0, abs=1e-3)  # 4-decimal rounding
    kinds = {c["kind"]: c for c in r["convs"]}
    assert kinds["7x7 stride 2"]["nodes"] == 1 and kinds["3x3 stride 1"]["nodes"] > 10
    assert all(c["gflop_per_s"] > 0 for c in r["convs"])
    assert r["batch"] == 2 and r["wall_ms_per_image"] > 0
