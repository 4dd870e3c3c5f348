"""Shared pytest fixtures.

`lite0_model` exports the offline default (efficientnet_lite0, real ImageNet weights) once per
test session; tests that need a real dn2 model take it instead of exporting their own.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests share the 2 CI cores; keep BLAS/onnxruntime from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def lite0_model(tmp_path_factory) -> Path:
    """A verified efficientnet_lite0 dn2 model (fp32, 224 px) with the shipped ImageNet weights."""
    pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")
    from dn2.export.pipeline import export_model

    out = tmp_path_factory.mktemp("models") / "lite0.onnx"
    export_model("efficientnet_lite0", "imagenet", str(out), input_size=224, precision="fp32")
    return out


@pytest.fixture(scope="session")
def textile_dirs():
    """The simulated textile set shipped by PyPI conformal-clip-data: nominal / global / local."""
    ccd = pytest.importorskip("conformal_clip_data", reason="pip install 'dn2[test]'")
    return {"nominal": Path(ccd.nominal_dir()), "global": Path(ccd.global_dir()),
            "local": Path(ccd.local_dir())}
