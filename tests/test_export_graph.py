"""The graph contract: uint8 BGR in, normalisation inside, pooled embedding out; metadata."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")

from dn2.export.archs import get_arch  # noqa: E402
from dn2.export.graph import build_graph, export_onnx  # noqa: E402
from dn2.export.verify import ort_session  # noqa: E402
from dn2.export.weights import load_weights  # noqa: E402
from dn2.runtime.modelmeta import ModelMeta, ResizeRule, read_model_meta  # noqa: E402

SIZE = 64
# Same fp32 math in different order; see test_export_archs.REL_TOL.
REL_TOL = 1e-3
# Written out here, not imported, so a wrong constant in the arch table fails this test.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


def _reference(arch: str, model, bgr: np.ndarray) -> np.ndarray:
    """What the trunk gives for the same pixels, fed the way torchvision / TF-Lite feed it."""
    rgb = bgr[..., ::-1].astype(np.float64)
    if arch.startswith("resnet"):
        norm = (rgb - IMAGENET_MEAN) / IMAGENET_STD
    else:
        norm = (rgb - 127.0) / 128.0
    x = torch.from_numpy(np.ascontiguousarray(norm.transpose(0, 3, 1, 2))).float()
    with torch.no_grad():
        if arch.startswith("resnet"):
            model.fc = torch.nn.Identity()  # torchvision's own avgpool + flatten, then no head
            return model(x).numpy()
        return model.forward_features(x).mean(dim=(2, 3)).numpy()


@pytest.fixture(scope="module")
def photos():
    from dn2.export.samples import sample_photos

    return sample_photos(SIZE, ("coffee", "chelsea", "astronaut"))[1]


@pytest.mark.parametrize("arch,weights", [("resnet18", "none"), ("efficientnet_lite0", "imagenet")])
def test_uint8_bgr_graph_equals_torch_on_rgb_normalised_input(arch, weights, photos, tmp_path):
    spec = get_arch(arch)
    model = load_weights(spec, weights).model
    path = tmp_path / "m.onnx"
    export_onnx(build_graph(spec, model), path, SIZE)
    got = ort_session(str(path)).run(None, {"images": photos})[0]
    ref = _reference(arch, model, photos)
    assert np.abs(got - ref).max() / np.abs(ref).max() < REL_TOL
    # the test can tell a channel-order mistake: the same pixels read as RGB differ clearly
    swapped = ort_session(str(path)).run(None, {"images": np.ascontiguousarray(photos[..., ::-1])})[
        0
    ]
    assert np.abs(swapped - ref).max() / np.abs(ref).max() > 100 * REL_TOL


def test_lite_graph_is_clean_tf_same_padding_folded_into_convs(tmp_path):
    import onnx

    spec = get_arch("efficientnet_lite0")
    path = tmp_path / "lite.onnx"
    counts = export_onnx(build_graph(spec, load_weights(spec, "none").model), path, SIZE)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert counts["pads_folded"] == 17  # stem + 16 depthwise convs with kernel > 1
    assert "Pad" not in ops and "Identity" not in ops and "Constant" not in ops
    assert set(ops) <= {
        "Cast",
        "Reshape",
        "Gemm",
        "Shape",
        "Transpose",
        "Conv",
        "Clip",
        "ReduceMean",
        "Add",
    }
    pads = [
        list(a.ints)
        for n in model.graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "pads"
    ]
    assert [0, 0, 1, 1] in pads  # TF "SAME", stride 2 on an even size: all padding at the end


def test_metadata_round_trips_through_the_runtime_reader(tmp_path):
    spec = get_arch("resnet18")
    meta = ModelMeta(
        arch="resnet18",
        weights="none",
        weights_sha256="",
        input_size=SIZE,
        resize=ResizeRule.for_input_size(SIZE),
        dim=spec.dim,
        opset=18,
        precision="fp32",
        version="0.1.0",
        extra={"dn2.note": "x"},
    )
    path = tmp_path / "r18.onnx"
    export_onnx(build_graph(spec, load_weights(spec, "none").model), path, SIZE, meta=meta)
    back = read_model_meta(str(path))
    assert back == meta
    assert back.resize == ResizeRule(resize_to=73, crop=64)  # 64 / 0.875 = 73.1


def test_preprocessing_is_the_normalisation_of_the_rgb_pixels():
    """One Gemm over the channels (BGR -> RGB and 1 / std, plus the shift): the numbers of
    (x[..., ::-1] - mean) / std, in NCHW, on a real photo."""
    import torch

    from dn2.tools.bench.frames import sample_photos

    spec = get_arch("resnet18")
    graph = build_graph(spec, load_weights(spec, "none").model)
    img = np.ascontiguousarray(sample_photos()[0][:48, :64, ::-1])  # BGR, as the runtime feeds
    got = graph.preprocess(torch.from_numpy(img[None].copy())).numpy()[0]
    rgb = img[..., ::-1].astype(np.float32)
    mean, std = np.float32(spec.mean), np.float32(spec.std)
    want = (rgb * (np.float32(1) / std) + (-mean / std)).transpose(2, 0, 1)
    # the products are exact copies of x * (1 / std) (the other two terms are exact zeros);
    # only a fused multiply-add in the Gemm could round once instead of twice: 1 ulp
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=1e-6)
    assert got.shape == (3, 48, 64)
