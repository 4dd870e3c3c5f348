"""A tiny but real dn2 ONNX model (no torch) and synthetic image files, for fast runtime tests.

The model honours the dn2 contract (modelmeta.py): input ``images`` uint8 NHWC BGR [N,S,S,3],
output ``embedding`` float32 [N,D], dn2 metadata_props. Its feature is a 4x4 grid of
per-channel means plus a gradient-energy grid, projected by a fixed random matrix: images with
different colour layout or texture get different embeddings, like a (very small) CNN trunk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tiny_model import save_model


def make_tiny_model(path, size: int = 32, dim: int = 64, seed: int = 0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    from dn2.runtime.modelmeta import ModelMeta, ResizeRule

    rng = np.random.default_rng(seed)
    g = 4
    feat = 3 * g * g * 2
    w = rng.normal(0, 1.0 / np.sqrt(feat), size=(feat, dim)).astype(np.float32)
    kern = np.zeros((3, 1, 1, 2), np.float32)  # horizontal difference per channel
    kern[:, 0, 0, 0], kern[:, 0, 0, 1] = 1.0, -1.0
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(kern, "K"),
             numpy_helper.from_array(np.array([1.0 / 255], np.float32), "scale"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat")]
    pool = dict(kernel_shape=[size // g, size // g], strides=[size // g, size // g])
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["fs"]),
        helper.make_node("Transpose", ["fs"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["p1"], **pool),
        helper.make_node("Conv", ["nchw", "K"], ["dx"], group=3),
        helper.make_node("Mul", ["dx", "dx"], ["dx2"]),
        helper.make_node("AveragePool", ["dx2"], ["p2"],
                         kernel_shape=[size // g, size // g - 1], strides=[size // g, size // g]),
        helper.make_node("Reshape", ["p1", "flat"], ["r1"]),
        helper.make_node("Reshape", ["p2", "flat"], ["r2"]),
        helper.make_node("Concat", ["r1", "r2"], ["cat"], axis=1),
        helper.make_node("MatMul", ["cat", "W"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "dn2_tiny",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelMeta(arch="tiny", weights="random:seed%d" % seed, weights_sha256="",
                     input_size=size, resize=ResizeRule.for_input_size(size), dim=dim, opset=17,
                     precision="fp32", version="test")
    return save_model(model, meta, path)


def texture(rng: np.random.Generator, kind: str = "normal", size: int = 48) -> np.ndarray:
    """A BGR uint8 image: 'normal' = smooth gradient + mild noise; 'anomalous' = a bright
    high-contrast blotch and stripes on top."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b, c = rng.uniform(10, 50, size=3)  # each normal image has its own gentle gradient
    base = np.stack([80 + a * xx, 100 + b * yy, 120 + c * (xx + yy) / 2], -1)
    img = base + rng.normal(0, 6, size=base.shape)
    if kind == "anomalous":
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        r = size // 5
        mask = (yy * size - cy) ** 2 + (xx * size - cx) ** 2 < r * r
        img[mask] = [20, 230, 250]
        img[:, ::3] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(folder, n: int, kind: str = "normal", seed: int = 0, ext: str = ".png"):
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"{kind}_{i:04d}{ext}"
        cv2.imwrite(str(p), texture(rng, kind))
        out.append(p)
    return out
