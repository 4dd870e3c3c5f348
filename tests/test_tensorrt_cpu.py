"""The CPU side of the GPU path: what runs without TensorRT, CUDA or a GPU.

* build_engine without TensorRT: a clear error naming what to install, and nothing written;
* the engine cache key: stable across processes and versions, changed by every component;
* INT8 calibration batches from real image files in the graph's uint8 NHWC BGR layout;
* the verification gate's numbers (cosine, leave-one-out kNN rank agreement) on real embeddings;
* onnxruntime I/O binding (BoundRunner) against plain session.run on the CPU provider;
* the native engine runner's input contract and its missing-TensorRT error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dn2.runtime.errors import Dn2Error, ImageError, MissingExtraError, ModelError
from dn2.runtime.images import prepare, read_image
from dn2.runtime.modelmeta import ResizeRule

onnx = pytest.importorskip("onnx", reason="building the test model needs pip install 'dn2[export]'")
ort = pytest.importorskip("onnxruntime")

from dn2.export import tensorrt as trtx  # noqa: E402
from dn2.export.trt_calib import calibration_batches, calibration_digest, load_calibration_images  # noqa: E402
from dn2.export.trt_verify import (  # noqa: E402
    TOLERANCES,
    compare_embeddings,
    default_verify_images,
    loo_knn_scores,
    spearman,
)

from tiny_model import build_tiny_model  # noqa: E402

SIZE = 32


@pytest.fixture()
def tiny_model(tmp_path):
    return build_tiny_model(tmp_path / "tiny.onnx", input_size=SIZE, dim=16)


@pytest.fixture()
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail here even on a machine that has it."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def _files_under(p: Path):
    return sorted(q for q in p.rglob("*")) if p.exists() else []


# ---------------------------------------------------------------- build_engine without TensorRT


def test_build_engine_without_tensorrt_says_what_to_install_and_writes_nothing(
    tiny_model, tmp_path, monkeypatch, no_tensorrt
):
    cache = tmp_path / "engines"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "out" / "model.engine"
    lines = []
    with pytest.raises(MissingExtraError) as err:
        trtx.build_engine(tiny_model, "fp16", cache_dir=cache, output=out, log=lines.append)
    msg = str(err.value)
    assert "tensorrt is not installed" in msg
    assert "pip install" in msg and "tensorrt" in msg and "JetPack" in msg and "GPU" in msg
    assert isinstance(err.value, Dn2Error)  # CLIs print it as a message, not a traceback
    assert not cache.exists() and not out.parent.exists()
    # the default cache location stays untouched too
    with pytest.raises(MissingExtraError):
        trtx.build_engine(tiny_model, "fp32", log=lines.append)
    assert not (tmp_path / "xdg" / "dn2").exists()
    written = [p for p in _files_under(tmp_path) if p.suffix in (".engine", ".calib", ".json")]
    assert written == []


def test_build_engine_checks_arguments_before_tensorrt(tiny_model, tmp_path, no_tensorrt):
    with pytest.raises(Dn2Error, match=r"precision: expected one of fp32, fp16, int8, found 'fp8'"):
        trtx.build_engine(tiny_model, "fp8", cache_dir=tmp_path / "c")
    with pytest.raises(Dn2Error, match=r"int8 needs calibration images"):
        trtx.build_engine(tiny_model, "int8", cache_dir=tmp_path / "c")
    with pytest.raises(ModelError, match=r"expected a dn2 ONNX model file, found no such file"):
        trtx.build_engine(tmp_path / "missing.onnx", "fp16", cache_dir=tmp_path / "c")
    with pytest.raises(Dn2Error, match=r"workspace: expected a positive number"):
        trtx.build_engine(tiny_model, "fp16", workspace_gb=0, cache_dir=tmp_path / "c")
    not_dn2 = tmp_path / "plain.onnx"
    m = onnx.load(str(tiny_model))
    del m.metadata_props[:]
    onnx.save(m, str(not_dn2))
    with pytest.raises(ModelError, match=r"not a dn2 model"):
        trtx.build_engine(not_dn2, "fp16", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- cache key

BASE = dict(
    onnx_sha256="0" * 64,
    trt_version="10.3.0",
    gpu_name="Orin (sm_87)",
    precision="fp16",
    extra={"max_batch": 64, "opt_batch": 8, "input_size": 224},
)


def test_cache_key_is_stable():
    # A golden value: the key must not change between processes, Python versions or dn2 releases
    # unless the scheme is changed on purpose (that would orphan every cached engine).
    assert (
        trtx.engine_cache_key(**BASE)
        == "d61151ffe53b1ebb28a7aadb8656cb76aff6503c8d3bab47ec4afa1d7a9ac5dc"
    )
    reordered = dict(BASE, extra={"input_size": 224, "opt_batch": 8, "max_batch": 64})
    assert trtx.engine_cache_key(**reordered) == trtx.engine_cache_key(**BASE)


@pytest.mark.parametrize(
    "field,value",
    [
        ("onnx_sha256", "1" + "0" * 63),
        ("trt_version", "10.3.1"),
        ("gpu_name", "Orin (sm_72)"),
        ("gpu_name", "NVIDIA H100 80GB HBM3 (sm_90)"),
        ("precision", "int8"),
        ("precision", "fp32"),
        ("extra", {"max_batch": 32, "opt_batch": 8, "input_size": 224}),
        ("extra", {"max_batch": 64, "opt_batch": 8, "input_size": 224, "calib_sha256": "ab"}),
    ],
)
def test_cache_key_changes_with_each_component(field, value):
    assert trtx.engine_cache_key(**dict(BASE, **{field: value})) != trtx.engine_cache_key(**BASE)


def test_onnx_sha256_matches_hashlib(tiny_model):
    import hashlib

    from dn2.runtime.bundle import sha256_file  # what the engine cache key hashes the ONNX with

    assert sha256_file(tiny_model) == hashlib.sha256(tiny_model.read_bytes()).hexdigest()


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trtx.default_cache_dir() == tmp_path / "dn2" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert trtx.default_cache_dir() == tmp_path / "home" / ".cache" / "dn2" / "engines"


# ---------------------------------------------------------------- calibration batches


@pytest.fixture()
def calib_dir(tmp_path):
    d = tmp_path / "calib"
    (d / "sub").mkdir(parents=True)
    red = np.zeros((60, 90, 3), np.uint8)
    red[:, :, 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(d / "red.png"), red)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(d / "noise.jpg"), rng.integers(0, 256, (120, 50, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "sub" / "gray.png"), rng.integers(0, 256, (40, 40), dtype=np.uint8))
    for name in ("astronaut.png", "coffee.png", "chelsea.png"):  # real photographs
        src = [p for p in default_verify_images() if p.name == name]
        if src:
            (d / name).write_bytes(src[0].read_bytes())
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


def test_calibration_images_are_the_graphs_uint8_nhwc_bgr(calib_dir):
    rule = ResizeRule.for_input_size(SIZE)
    logged = []
    arr, problems = load_calibration_images(calib_dir, rule, log=logged.append)
    good = sorted(
        p for p in calib_dir.rglob("*") if p.suffix in (".png", ".jpg") and p.name != "broken.jpg"
    )
    assert arr.dtype == np.uint8 and arr.flags.c_contiguous
    assert arr.shape == (len(good), SIZE, SIZE, 3)  # NHWC, channels last
    # exactly the runtime's preparation, file by file (sorted path order)
    for got, path in zip(arr, good):
        np.testing.assert_array_equal(got, prepare(read_image(str(path)), rule))
    red = arr[[p.name for p in good].index("red.png")]
    assert (red[..., 2] == 255).all() and (red[..., :2] == 0).all()  # BGR kept, not RGB
    gray = arr[[p.name for p in good].index("gray.png")]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    bad = {Path(p).name for p, _ in problems}
    assert {"broken.jpg", "notes.txt"} <= bad
    assert any("broken.jpg" in line for line in logged)


def test_calibration_accepts_lists_and_prepared_batches(calib_dir):
    rule = ResizeRule.for_input_size(SIZE)
    paths = sorted(str(p) for p in calib_dir.glob("*.png"))
    arr, _ = load_calibration_images(paths, rule, log=lambda m: None)
    imgs = [read_image(p) for p in paths]
    arr2, _ = load_calibration_images(imgs, rule, log=lambda m: None)
    np.testing.assert_array_equal(arr, arr2)
    arr3, _ = load_calibration_images(arr, rule)
    np.testing.assert_array_equal(arr, arr3)
    with pytest.raises(ImageError, match=r"expected uint8 \[N, 32, 32, 3\]"):
        load_calibration_images(arr.astype(np.float32), rule)
    capped, _ = load_calibration_images(paths, rule, max_images=2, log=lambda m: None)
    assert len(capped) == 2
    np.testing.assert_array_equal(capped[0], arr[0])  # evenly sampled, first and last kept
    np.testing.assert_array_equal(capped[1], arr[-1])


def test_calibration_without_usable_images_is_a_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(Dn2Error, match=r"INT8 calibration: expected readable images"):
        load_calibration_images(tmp_path, ResizeRule.for_input_size(SIZE), log=lambda m: None)


def test_calibration_batches_and_digest():
    x = np.random.default_rng(0).integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8)
    b = calibration_batches(x, 4)
    assert [len(t) for t in b] == [4, 4]  # the trailing 2 are dropped, not padded
    np.testing.assert_array_equal(np.concatenate(b), x[:8])
    assert [len(t) for t in calibration_batches(x[:3], 8)] == [3]
    d = calibration_digest(x)
    assert d == calibration_digest(x.copy())
    y = x.copy()
    y[5, 1, 2, 0] ^= 1
    assert calibration_digest(y) != d
    assert calibration_digest(x[:9]) != d


# ---------------------------------------------------------------- verification numbers


def test_spearman_and_loo_knn_match_references():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30)
    b[:10] = a[:10]
    a[3] = a[4]  # a tie
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    e = rng.normal(size=(12, 5))
    brute = [
        np.mean(sorted(((e[i] - e[j]) ** 2).sum() for j in range(12) if j != i)[:2])
        for i in range(12)
    ]
    # the gate scores with the runtime's own leave-one-out (a float32 exact bank), not a
    # float64 copy of it: float32 rounding, ~1e-7 relative, hence 1e-5
    np.testing.assert_allclose(loo_knn_scores(e, k=2), brute, rtol=1e-5)


@pytest.fixture()
def real_embeddings(tiny_model):
    rule = ResizeRule.for_input_size(SIZE)
    paths = default_verify_images()
    if len(paths) < 8:
        pytest.skip("scikit-image's sample images are needed: pip install 'dn2[test]'")
    batch, _ = load_calibration_images(paths, rule, max_images=20, log=lambda m: None)
    sess = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": batch})[0]


def test_gate_passes_faithful_engines_and_fails_wrong_ones(real_embeddings):
    ref = real_embeddings
    assert compare_embeddings(ref, ref.copy(), "fp32")["passed"]
    # fp16 storage of the same numbers: well inside the fp16 tolerance
    rep = compare_embeddings(ref, ref.astype(np.float16).astype(np.float32), "fp16")
    assert rep["passed"] and rep["min_cosine"] > 0.9999, rep
    # an engine that mixes up images (rows permuted) must fail on both measures
    bad = compare_embeddings(ref, np.roll(ref, 1, axis=0), "int8")
    assert not bad["passed"] and bad["rank_spearman"] < TOLERANCES["int8"].min_rank
    nan = ref.copy()
    nan[2, 0] = np.nan
    rep = compare_embeddings(ref, nan, "fp16")
    assert not rep["passed"] and "NaN" in rep["problem"]
    with pytest.raises(ModelError, match="does not match the reference"):
        compare_embeddings(ref, ref[:, :4], "fp16")


def test_default_verification_images_are_real_and_offline():
    paths = default_verify_images()
    if not paths:
        pytest.skip("scikit-image not installed")
    assert len(paths) >= 8
    arr, problems = load_calibration_images(
        paths, ResizeRule.for_input_size(SIZE), log=lambda m: None, what="verification"
    )
    assert len(arr) >= 8 and not problems


# ---------------------------------------------------------------- onnxruntime I/O binding


def test_bound_runner_matches_session_run_on_cpu(tiny_model):
    from dn2.runtime.gpu_io import BoundRunner

    sess = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"])
    run = BoundRunner(sess)
    assert (run.device, run.dim) == ("cpu", 16)
    rng = np.random.default_rng(2)
    first = None
    for n in (4, 1, 4, 7):  # same-size batches reuse their buffers; sizes can change
        x = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
        got = run.run(x)
        np.testing.assert_array_equal(
            got, sess.run(None, {"images": x})[0]
        )  # same kernels, same bits
        if first is None:
            first, kept = got, got.copy()
    np.testing.assert_array_equal(first, kept)  # a later run must not overwrite earlier results
    with pytest.raises(ModelError, match=r"expected uint8 \[N, S, S, 3\]"):
        run.run(np.zeros((1, SIZE, SIZE, 3), np.float32))


def test_tensorrt_ep_options_carry_the_dn2_profile(tmp_path):
    from dn2.runtime.gpu_io import tensorrt_ep_options

    o = tensorrt_ep_options(str(tmp_path), 224, fp16=True, max_batch=64, opt_batch=8)
    assert o["trt_profile_min_shapes"] == "images:1x224x224x3"
    assert o["trt_profile_opt_shapes"] == "images:8x224x224x3"
    assert o["trt_profile_max_shapes"] == "images:64x224x224x3"
    assert o["trt_engine_cache_enable"] and o["trt_engine_cache_path"] == str(tmp_path)
    o8 = tensorrt_ep_options(str(tmp_path), 224, int8_table=str(tmp_path / "x" / "abc.calib"))
    assert o8["trt_int8_enable"] and o8["trt_int8_calibration_table_name"] == "abc.calib"


# ---------------------------------------------------------------- native runner, CPU side


def test_native_runner_without_tensorrt_is_a_clear_error(tmp_path, no_tensorrt):
    from dn2.runtime.trt_engine import TrtEngine

    with pytest.raises(MissingExtraError, match=r"tensorrt is not installed .*JetPack"):
        TrtEngine(tmp_path / "x.engine")


def test_native_runner_input_contract():
    from dn2.runtime.trt_engine import check_batch

    ok = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    assert check_batch(ok, SIZE) is not None
    with pytest.raises(ImageError, match=r"expected uint8 pixels .* found dtype float32"):
        check_batch(ok.astype(np.float32), SIZE)
    with pytest.raises(
        ImageError, match=r"expected a batch of shape \[N, 32, 32, 3\].*\(2, 3, 32, 32\)"
    ):
        check_batch(np.zeros((2, 3, SIZE, SIZE), np.uint8), SIZE)  # NCHW is refused
    with pytest.raises(ImageError, match=r"found list"):
        check_batch([1, 2], SIZE)


def test_gpu_name_without_a_gpu_is_a_clear_error():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    from dn2.runtime.cuda_rt import CudaError, CudaRT, gpu_name

    err, count = CudaRT().rt.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(CudaError, match=r"expected cudaSuccess, found cudaError"):
        gpu_name()


def test_gpu_providers_without_onnxruntime_gpu_say_how_to_install():
    from dn2.runtime.gpu_io import gpu_providers

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(
        ModelError, match=r"pip uninstall -y onnxruntime && pip install 'dn2\[gpu\]'"
    ):
        gpu_providers("cuda", 224)
    with pytest.raises(ModelError, match=r"expected 'tensorrt' or 'cuda'"):
        gpu_providers("rocm", 224)


def test_bench_gpu_timing_and_table(tiny_model):
    from dn2.runtime.gpu_io import BoundRunner
    from dn2.tools.bench.gpu import table, time_batches

    run = BoundRunner(ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"])).run
    x = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    r = time_batches(run, x, warmup=1, iters=3, repeats=2)
    assert 0 < r["min"] <= r["img_per_s"] <= r["max"]
    report = {
        "device": "NVIDIA H100 80GB HBM3 (sm_90)",
        "tensorrt": "10.3.0",
        "onnxruntime": "1.23.0",
        "model": {"arch": "resnet101", "weights": "none", "input_size": 224},
        "method": "m",
        "rows": [
            {"backend": "ort-cuda", "precision": "fp32", "batch": 1, **r},
            {"backend": "ort-cuda", "precision": "fp32", "batch": 8, "skipped": "why"},
            {"backend": "trt-native", "precision": "int8", "batch": 1, "skipped": "no calib"},
            {"backend": "trt-native", "precision": "int8", "batch": 8, "skipped": "no calib"},
        ],
    }
    text = table(report)
    assert "NVIDIA H100 80GB HBM3 (sm_90)" in text and "| batch 1 | batch 8 |" in text
    assert f"| ort-cuda | fp32 | {r['img_per_s']:.0f} | n/a |" in text
    assert "| trt-native | int8 | n/a | n/a |" in text and "n/a trt-native int8: no calib" in text
