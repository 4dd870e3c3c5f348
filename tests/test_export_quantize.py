"""fp16 / int8 variants and the verification gate that refuses bad models."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")

from dn2.export import gate, quantize  # noqa: E402
from dn2.export.archs import get_arch  # noqa: E402
from dn2.export.graph import EmbeddingGraph, build_graph, export_onnx  # noqa: E402
from dn2.export.int8config import Int8Settings  # noqa: E402
from dn2.export.pipeline import export_model  # noqa: E402
from dn2.export.samples import sample_photos  # noqa: E402
from dn2.export.verify import VerificationError, cosines, ort_embed, verify_fp32  # noqa: E402
from dn2.export.weights import load_weights  # noqa: E402
from dn2.runtime.modelmeta import read_model_meta  # noqa: E402


def _session_config(path) -> dict:
    extra = read_model_meta(str(path)).extra
    return json.loads(extra.get("dn2.ort_session_config", "{}"))


def test_knn_scores_and_spearman():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(12, 5))
    brute = [
        np.mean(sorted(((e[i] - e[j]) ** 2).sum() for j in range(12) if j != i)[:2])
        for i in range(12)
    ]
    assert np.allclose(quantize.knn_scores(e, k=2), brute)
    s = rng.normal(size=30)
    assert quantize.spearman(s, s * 3 + 1) == pytest.approx(1.0)
    assert quantize.spearman(s, -s) == pytest.approx(-1.0)
    assert quantize.spearman(s, np.exp(s)) == pytest.approx(1.0)  # ranks only
    assert abs(quantize.spearman(s, rng.normal(size=30))) < 0.5


@pytest.mark.slow
def test_lite0_int8_keeps_cosine_on_real_photos(lite0_model, tmp_path):
    import cv2

    names, photos = sample_photos(224)
    calib = tmp_path / "calib"
    calib.mkdir()
    for name, img in zip(names[::2], photos[::2]):  # calibrate on half; the other half is unseen
        cv2.imwrite(str(calib / f"{name}.png"), img)
    out = tmp_path / "lite0-int8.onnx"
    report = export_model(
        "efficientnet_lite0", "imagenet", str(out), precision="int8", calib=str(calib)
    )
    q = report["quantize"]
    assert q["calib_images"] == 8 and q["passed"] and q["knn_spearman"] >= 0.9
    meta = read_model_meta(str(out))
    assert meta.precision == "int8" and meta.dim == 1280 and meta.input_size == 224
    config = _session_config(out)
    # the exact kernels are asked for unless the gate passed with the default ones on a CPU
    # whose default kernels saturate (the worst case)
    assert config == q["ort_session_config"]
    if not quantize.default_int8_kernels_saturate() and not config:
        # the default kernels are trusted off an AVX2-without-VNNI CPU only for settings that
        # cannot saturate
        assert Int8Settings.from_json(q["choice"]["quantizer"]).saturation_free
    assert config in ({}, {"session.x64quantprecision": "1"})
    # independent check against the fp32 model, on all 16 photos (8 never seen in calibration):
    # the requirement is cosine >= 0.99 on real photos
    cos = cosines(ort_embed(str(lite0_model), photos), ort_embed(str(out), photos, config))
    assert cos.min() >= 0.99, dict(zip(names, cos.round(4)))
    assert out.stat().st_size < lite0_model.stat().st_size / 2


@pytest.mark.slow
def test_resnet_int8_random_weights_on_sample_photos(tmp_path, capsys):
    out = tmp_path / "r18-int8.onnx"
    report = export_model("resnet18", "none", str(out), input_size=96, precision="int8")
    assert "warning: no --calib DIR" in capsys.readouterr().err
    q = report["quantize"]
    assert q["float_convs"] == 0 and q["int8_convs"] == 20  # a ResNet quantizes whole
    spec = get_arch("resnet18")
    names, photos = sample_photos(96)
    ref = build_graph(spec, load_weights(spec, "none").model)
    from dn2.export.verify import torch_embed

    cos = cosines(torch_embed(ref, photos), ort_embed(str(out), photos, _session_config(out)))
    assert cos.min() >= 0.99
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_fp16_keeps_io_types_and_agrees(tmp_path):
    import onnx

    out = tmp_path / "lite0-fp16.onnx"
    report = export_model(
        "efficientnet_lite0", "imagenet", str(out), input_size=96, precision="fp16"
    )
    assert report["quantize"]["passed"] and read_model_meta(str(out)).precision == "fp16"
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_w = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert all(
        t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer if t.name in conv_w
    )
    spec = get_arch("efficientnet_lite0")
    names, photos = sample_photos(96)
    from dn2.export.verify import torch_embed

    ref = torch_embed(build_graph(spec, load_weights(spec, "imagenet").model), photos)
    got = ort_embed(str(out), photos)
    # fp16 rounding (11-bit mantissa) through ~50 layers: measured cosine > 0.9999
    assert got.dtype == np.float32 and cosines(ref, got).min() > 0.999


def test_int8_below_tolerance_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quantize, "INT8_MIN_COSINE", 1.01)  # unreachable: forces the refusal
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="int8 vs fp32.*No model was written"):
        export_model("resnet18", "none", str(out), input_size=64, precision="int8")
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert "first 0/20 convs in float" in err and "first 12/20 convs in float" in err


class _RGBGraph(EmbeddingGraph):
    """A plausible bug: the channel swap forgotten."""

    def preprocess(self, images):
        # mix with its rows reversed: input channel c -> output channel c, BGR read as RGB
        x = images.float() @ self.mix.flip(0) + self.shift
        return x.permute(0, 3, 1, 2)


def test_fp32_gate_catches_a_wrong_graph(tmp_path):
    spec = get_arch("efficientnet_lite0")
    model = load_weights(spec, "imagenet").model
    path = tmp_path / "m.onnx"
    export_onnx(build_graph(spec, model), path, 64)
    assert verify_fp32(build_graph(spec, model), str(path), 64)["passed"]
    with pytest.raises(VerificationError, match="onnxruntime fp32 vs torch: max-abs error"):
        verify_fp32(_RGBGraph(spec, model).eval(), str(path), 64)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu sse2 avx avx2 fma", True),  # AVX2 without VNNI: u8 x s8 saturates in int16
        ("fpu sse2 avx avx2 fma avx512f avx512_vnni", False),
        ("fpu sse2 avx avx2 avx_vnni", False),
        ("fpu sse2 sse4_2", False),  # no AVX2: other kernels, no claim made
    ],
)
def test_default_int8_kernels_saturate_reads_cpu_flags(tmp_path, monkeypatch, flags, expected):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert quantize.default_int8_kernels_saturate(str(info)) is expected
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert quantize.default_int8_kernels_saturate(str(info)) is False
    assert quantize.default_int8_kernels_saturate(str(tmp_path / "missing")) is False


def test_int8_choice_is_recorded_and_the_same_export_makes_the_same_choice(tmp_path, capsys):
    from dn2.runtime.modelmeta import K_INT8_CHOICE

    reports, metas = [], []
    for name in ("a.onnx", "b.onnx"):
        out = tmp_path / name
        reports.append(export_model("resnet18", "none", str(out), input_size=64, precision="int8"))
        metas.append(json.loads(read_model_meta(str(out)).extra[K_INT8_CHOICE]))
    err = capsys.readouterr().err
    q = reports[0]["quantize"]
    choice = q["choice"]
    # recorded: in the report and, the same, in the model's metadata
    assert metas[0] == choice
    assert choice["settings"] == q["attempts"][choice["attempt"] - 1]["settings"]
    assert choice["kernels"] == ("exact" if q["ort_session_config"] else "default")
    tol = gate.TOLERANCES["int8"]
    # the margins are the measured values minus the gate's tolerances (rounded to 5 places)
    assert choice["margin"]["cosine"] == pytest.approx(
        choice["min_cosine"] - tol.min_cosine, abs=2e-5
    )
    assert choice["margin"]["knn_spearman"] == pytest.approx(
        choice["knn_spearman"] - tol.min_rank, abs=2e-5
    )
    assert choice["margin"]["cosine"] >= 0 and choice["margin"]["knn_spearman"] >= 0
    assert "int8 choice: " + choice["settings"] in err and "margin" in err
    # deterministic: same model, same calibration images, same machine -> the same choice,
    # attempt for attempt, and byte-identical int8 files
    assert metas[1] == choice
    assert reports[1]["quantize"]["attempts"] == q["attempts"]
    assert reports[1]["output_sha256"] == reports[0]["output_sha256"]
    assert choice["calib_sha256"] == quantize.images_digest(sample_photos(64)[1])


def test_attempt_plan_is_fixed_fast_kernels_first():
    plan = quantize.attempt_plan(40, saturating=True)
    kernels = ["exact" if c else "default" for _, c in plan]
    n_fast = kernels.count("default")
    # every fast attempt before any exact one, each with a growing float prefix
    assert kernels == ["default"] * n_fast + ["exact"] * (len(plan) - n_fast) and n_fast > 0
    fast = [s.float_first for s, _ in plan[:n_fast]]
    assert fast == sorted(fast) and fast[0] == 0
    assert {s for s, _ in plan[:n_fast]} == {quantize.DEFAULT_INT8.with_float(k) for k in fast}
    assert {s for s, _ in plan[n_fast:]} == {quantize.FALLBACK_INT8.with_float(k) for k in fast}
    assert quantize.attempt_plan(40, saturating=True) == plan  # no state, no randomness
    # a CPU whose default kernels do not saturate cannot vouch for saturating settings there;
    # settings that cannot saturate run on the fast kernels everywhere
    other = quantize.attempt_plan(40, saturating=False)
    if quantize.DEFAULT_INT8.saturation_free:
        assert other == plan
    else:
        assert all(c for _, c in other)
    # 7-bit weights cannot saturate: 2 * 255 * 64 = 32640 < 32767; full 8-bit s8 weights can
    assert Int8Settings(reduce_range=True).saturation_free
    assert not Int8Settings().saturation_free


def test_gate_refuses_an_attempt_below_tolerance_and_moves_on(tmp_path, monkeypatch, capsys):
    """A real first attempt, then the gate's rank tolerance put just above what that attempt
    reached: the same attempt (deterministic) must now be refused and the next one tried."""
    out = tmp_path / "m.onnx"
    probe = export_model("resnet18", "none", str(out), input_size=64, precision="int8")
    rho0 = probe["quantize"]["attempts"][0]["knn_spearman"]
    assert rho0 < 1.0  # random-weight int8 never ranks 16 photos exactly like fp32
    monkeypatch.setattr(quantize, "INT8_MIN_SPEARMAN", min(rho0 + 1e-6, 1.0))
    out.unlink()
    try:
        rep = export_model("resnet18", "none", str(out), input_size=64, precision="int8")
    except VerificationError as exc:  # every attempt below: refused, nothing written
        assert "No model was written" in str(exc) and not out.exists()
        return
    q = rep["quantize"]
    assert q["choice"]["attempt"] > 1  # the first attempt was refused
    assert q["attempts"][0]["knn_spearman"] < q["choice"]["tolerance"]["min_knn_spearman"]
    assert q["choice"]["knn_spearman"] >= q["choice"]["tolerance"]["min_knn_spearman"]
