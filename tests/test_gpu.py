"""GPU path on a real NVIDIA GPU: TensorRT engines and onnxruntime-gpu providers.

Every test here is marked ``gpu`` and skips, with the reason, on a machine without a CUDA GPU,
TensorRT or onnxruntime-gpu (CI has none). On a GPU box:

    pip uninstall -y onnxruntime && pip install -e '.[export,test,gpu,tensorrt]'
    python -m pytest -m gpu tests/test_gpu.py -v

The model is ResNet101 with random (seeded, BatchNorm-calibrated) weights at 224 px; the images
are real: scikit-image's sample photos and the textile set of conformal-clip-data.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from dn2.runtime.errors import Dn2Error
from dn2.runtime.modelmeta import ResizeRule

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
ort = pytest.importorskip("onnxruntime")

SIZE = 224


def _cuda_device() -> str:
    try:
        from dn2.runtime.cuda_rt import CudaRT

        return CudaRT().device_label(0)
    except Dn2Error as exc:
        pytest.skip(f"no usable CUDA GPU: {exc}")


def _need_tensorrt():
    trt = pytest.importorskip(
        "tensorrt",
        reason="TensorRT Python API not installed "
        "(x86_64: pip install 'dn2[tensorrt]'; Jetson: JetPack 6)",
    )
    _cuda_device()
    if not hasattr(trt.BuilderFlag, "FP16"):
        pytest.skip(
            f"TensorRT {trt.__version__}: weakly-typed fp16/int8 flags were removed in 11.x"
        )
    return trt


def _need_provider(name: str) -> None:
    if name not in ort.get_available_providers():
        pytest.skip(
            f"{name} not in onnxruntime {ort.__version__} "
            f"({ort.get_available_providers()}): pip uninstall -y onnxruntime && "
            f"pip install 'dn2[gpu]'"
        )
    _cuda_device()


@pytest.fixture(scope="module")
def resnet101(tmp_path_factory):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            pytest.skip("neither onnxruntime-gpu nor TensorRT is installed")
    _cuda_device()  # skip before the (minutes-long) export on a machine without a GPU
    pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")
    from dn2.export.pipeline import export_model

    out = tmp_path_factory.mktemp("gpu") / "resnet101.onnx"
    export_model("resnet101", "none", str(out), input_size=SIZE, precision="fp32")
    return out


@pytest.fixture(scope="module")
def images():
    """uint8 [N, 224, 224, 3] BGR: real photos prepared the runtime's way."""
    from dn2.export.trt_calib import load_calibration_images
    from dn2.export.trt_verify import default_verify_images

    paths = default_verify_images()
    if len(paths) < 8:
        pytest.skip("scikit-image's sample photos are needed: pip install 'dn2[test]'")
    arr, _ = load_calibration_images(
        paths, ResizeRule.for_input_size(SIZE), max_images=24, log=lambda m: None
    )
    return arr


@pytest.fixture(scope="module")
def reference(resnet101, images):
    sess = ort.InferenceSession(str(resnet101), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [sess.run(None, {"images": images[i : i + 8]})[0] for i in range(0, len(images), 8)]
    )


@pytest.fixture(scope="module")
def calib(textile_dirs):
    from dn2.export.trt_calib import load_calibration_images

    arr, _ = load_calibration_images(
        textile_dirs["nominal"], ResizeRule.for_input_size(SIZE), max_images=64, log=lambda m: None
    )
    return arr


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_build_verify_cache_and_run(
    resnet101, images, reference, calib, tmp_path, precision
):
    _need_tensorrt()
    from dn2.export.tensorrt import build_engine
    from dn2.export.trt_verify import TOLERANCES, row_cosine
    from dn2.runtime.trt_engine import TrtEngine, read_sidecar

    lines = []
    cache = tmp_path / "engines"
    path = build_engine(
        resnet101,
        precision,
        calib=calib if precision == "int8" else None,
        cache_dir=cache,
        log=lines.append,
        max_batch=64,
    )
    assert path.is_file() and path.parent == cache
    side = read_sidecar(path)
    assert side["verification"]["passed"] and side["components"]["precision"] == precision
    assert any("verification" in ln and "PASS" in ln for ln in lines)
    assert any("TensorRT build" in ln or "still running" in ln for ln in lines), (
        "no progress logged"
    )
    # the cache: same inputs -> same file, no rebuild
    lines.clear()
    t0 = time.monotonic()
    again = build_engine(
        resnet101,
        precision,
        calib=calib if precision == "int8" else None,
        cache_dir=cache,
        log=lines.append,
        max_batch=64,
    )
    assert again == path and any("cache hit" in ln for ln in lines)
    assert time.monotonic() - t0 < 60
    # the native runner against the fp32 reference, across batch sizes (chunking at 8)
    with TrtEngine(path, batch_size=8) as eng:
        assert eng.meta.arch == "resnet101" and eng.dim == 2048
        got = eng.embed_batch(images)
        one = eng.embed_batch(images[:1])
    tol = TOLERANCES[precision]
    assert row_cosine(reference, got).min() >= tol.min_cosine
    # a row must not depend on its batch mates (same kernels may differ across shapes: fp noise)
    assert row_cosine(got[:1], one).min() >= tol.min_cosine


@pytest.mark.parametrize(
    "provider,min_cos",
    [
        # CUDA EP fp32: cuDNN may use TF32 tensor cores on Ampere+ (onnxruntime's default), ~1e-4
        ("CUDAExecutionProvider", 0.9995),
        # TensorRT EP with fp16 enabled: fp16 accumulations through 101 layers, ~1e-3
        ("TensorrtExecutionProvider", 0.999),
    ],
)
def test_onnxruntime_gpu_provider_parity(resnet101, images, reference, tmp_path, provider, min_cos):
    _need_provider(provider)
    from dn2.export.trt_verify import row_cosine
    from dn2.runtime.gpu_io import BoundRunner, gpu_providers

    kind = "tensorrt" if provider.startswith("Tensorrt") else "cuda"
    sess = ort.InferenceSession(
        str(resnet101),
        providers=gpu_providers(kind, SIZE, cache_dir=str(tmp_path / "ort-trt"), fp16=True),
    )
    assert sess.get_providers()[0] == provider, sess.get_providers()  # proven, not assumed
    plain = np.concatenate(
        [sess.run(None, {"images": images[i : i + 8]})[0] for i in range(0, len(images), 8)]
    )
    assert row_cosine(reference, plain).min() >= min_cos
    run = BoundRunner(sess)
    assert run.device == "cuda"
    bound = np.concatenate([run.run(images[i : i + 8]) for i in range(0, len(images), 8)])
    # same session, same kernels, same shapes: I/O binding changes only where buffers live
    np.testing.assert_allclose(bound, plain, rtol=1e-5, atol=1e-5)
