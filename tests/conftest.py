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
def lite0_at(tmp_path_factory):
    """``lite0_at(size)``: a verified efficientnet_lite0 dn2 model (fp32, ``size`` px) with the
    shipped ImageNet weights, exported once per size and session."""
    made = {}

    def get(size: int) -> Path:
        if size not in made:
            pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")
            from dn2.export.pipeline import export_model

            out = tmp_path_factory.mktemp("models") / f"lite0_{size}.onnx"
            export_model(
                "efficientnet_lite0", "imagenet", str(out), input_size=size, precision="fp32"
            )
            made[size] = out
        return made[size]

    return get


@pytest.fixture(scope="session")
def lite0_model(lite0_at) -> Path:
    """The offline default at 224 px."""
    return lite0_at(224)


@pytest.fixture(scope="session")
def textile_dirs():
    """The simulated textile set shipped by PyPI conformal-clip-data: nominal / global / local."""
    ccd = pytest.importorskip("conformal_clip_data", reason="pip install 'dn2[test]'")
    return {
        "nominal": Path(ccd.nominal_dir()),
        "global": Path(ccd.global_dir()),
        "local": Path(ccd.local_dir()),
    }


@pytest.fixture(scope="session")
def lite0_patches(tmp_path_factory):
    """(model path, export report): efficientnet_lite0 at 224 px with the ``patches`` output
    (real ImageNet weights), exported and verified once per session."""
    pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")
    from dn2.export.pipeline import export_model

    out = tmp_path_factory.mktemp("models") / "lite0_224_patches.onnx"
    report = export_model(
        "efficientnet_lite0", "imagenet", str(out), input_size=224, precision="fp32", patches=True
    )
    return out, report
