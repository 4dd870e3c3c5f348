"""Every arch exports with random weights and the ONNX graph matches torch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")

from dn2.export.archs import ARCH_NAMES, ARCHS, get_arch  # noqa: E402
from dn2.export.graph import build_graph, export_onnx  # noqa: E402
from dn2.export.verify import ort_session, torch_embed  # noqa: E402
from dn2.export.weights import load_weights  # noqa: E402
from dn2.runtime.errors import Dn2Error  # noqa: E402

# Small inputs keep CI quick: 64 px still runs every layer (ResNet's last map is 2x2).
SIZE = 64
# fp32 on both sides, different kernels and summation order: measured 1e-6 relative at 224 px
# and up to 1.2e-4 for resnet101 at 64 px (random weights: deep residual sums cancel). 1e-3,
# the export gate's tolerance, is still 100x below what a wrong layer, padding or normalisation
# produces (> 1e-1).
REL_TOL = 1e-3


def test_arch_table_is_what_the_readme_lists():
    assert ARCH_NAMES == (
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "wide_resnet50_2",
        "efficientnet_lite0",
        "efficientnet_lite2",
    )
    assert ARCHS["resnet101"].dim == 2048 and ARCHS["efficientnet_lite0"].dim == 1280
    assert ARCHS["resnet18"].dim == 512
    # ResNet: torchvision's ImageNet mean/std in 0..255 units; Lite: (x - 127) / 128
    assert ARCHS["resnet50"].mean == pytest.approx((123.675, 116.28, 103.53))
    assert ARCHS["resnet50"].std == pytest.approx((58.395, 57.12, 57.375))
    assert ARCHS["efficientnet_lite2"].mean == (127.0,) * 3
    assert ARCHS["efficientnet_lite2"].std == (128.0,) * 3
    with pytest.raises(Dn2Error, match="valid choices: resnet18"):
        get_arch("vgg16")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_random_weights_export_matches_torch(arch, tmp_path):
    spec = get_arch(arch)
    graph = build_graph(spec, load_weights(spec, "none").model)
    path = tmp_path / f"{arch}.onnx"
    export_onnx(graph, path, SIZE)

    sess = ort_session(str(path))
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(uint8)", [SIZE, SIZE, 3])
    assert isinstance(inp.shape[0], str), "batch axis must be dynamic"
    assert (out.name, out.type, out.shape[1]) == ("embedding", "tensor(float)", spec.dim)

    rng = np.random.default_rng(1)
    for n in (1, 3):  # two batch sizes through the same session: the batch really is dynamic
        x = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
        ref = torch_embed(graph, x)
        got = sess.run(None, {"images": x})[0]
        assert got.shape == (n, spec.dim) and got.dtype == np.float32
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < REL_TOL, f"{arch}: relative max-abs error {err:.2e}"


def test_random_weights_are_seeded_and_sensibly_scaled():
    spec = get_arch("resnet18")
    a, b = load_weights(spec, "none").model, load_weights(spec, "none").model
    sa, sb = a.state_dict(), b.state_dict()
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)
    x = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    emb = torch_embed(build_graph(spec, a), x)
    # BatchNorm statistics measured on noise keep activations at a trained net's scale (well
    # inside fp16's 65504), instead of torchvision's identity statistics
    assert np.isfinite(emb).all() and 1e-3 < np.abs(emb).max() < 1e3
