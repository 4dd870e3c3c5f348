"""The one verification gate: one tolerance table, scipy's Spearman, the runtime's LOO scores."""

from __future__ import annotations

import numpy as np
import pytest

from dn2.export import gate, quantize, trt_verify, verify
from dn2.runtime.scoring import loo_knn_scores


def test_one_table_behind_every_gate():
    t = gate.TOLERANCES
    # ONNX int8 and TensorRT int8 used to disagree (0.99 vs 0.98): one number now
    assert verify.INT8_MIN_COSINE == t["int8"].min_cosine == 0.99
    assert quantize.INT8_MIN_SPEARMAN == verify.INT8_MIN_SPEARMAN == t["int8"].min_rank
    assert trt_verify.TOLERANCES is t
    assert (verify.FP32_MIN_COSINE, verify.FP16_MIN_COSINE) == (
        t["fp32"].min_cosine,
        t["fp16"].min_cosine,
    )


def test_spearman_is_scipys_with_one_degenerate_rule():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    a[3] = a[4]  # a tie
    assert gate.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    flat = np.ones(10)
    # the ONNX gate said 0.0 and the TensorRT gate 1.0 here; one rule: both tied -> 1, one -> 0
    assert gate.spearman(flat, flat * 2) == 1.0
    assert gate.spearman(flat, np.arange(10.0)) == 0.0 == gate.spearman(np.arange(10.0), flat)
    assert quantize.spearman is gate.spearman is trt_verify.spearman


def test_every_leave_one_out_is_the_runtimes():
    from dn2.tools.eval.scorer import loo_scores

    e = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
    ref = loo_knn_scores(e, 2)
    brute = [
        np.mean(sorted(((e[i] - e[j]) ** 2).sum() for j in range(12) if j != i)[:2])
        for i in range(12)
    ]
    np.testing.assert_allclose(ref, brute, rtol=1e-5)  # float32 bank vs float64 brute force
    for other in (quantize.knn_scores(e, 2), trt_verify.loo_knn_scores(e, 2), loo_scores(e, 2)):
        np.testing.assert_array_equal(other, ref)
    assert gate.rank_agreement(e, e + 1e-7) == 1.0
    assert gate.rank_agreement(e, np.roll(e, 1, axis=0)) < 0.9


def test_fp16_gate_checks_the_knn_rank_agreement(tmp_path):
    """A real fp16 conversion (onnxruntime's converter) of a real ONNX model, run by
    onnxruntime: the report's rank agreement is the runtime's leave-one-out scores' Spearman,
    checked against the table's fp16 entry, and a model that ranks differently is refused."""
    from tiny_model import build_tiny_model, make_tiny_model

    fp32 = make_tiny_model(tmp_path / "m.onnx", dim=32)
    half = tmp_path / "m16.onnx"
    quantize.to_fp16(str(fp32), str(half))
    names, images = verify.verification_inputs(32)  # real photos + seeded noise
    rep = quantize.verify_fp16(str(fp32), str(half), names, images)
    ref, out = verify.ort_embed(str(fp32), images), verify.ort_embed(str(half), images)
    assert rep["knn_spearman"] == gate.rank_agreement(ref, out)
    assert rep["knn_spearman"] >= gate.TOLERANCES["fp16"].min_rank
    assert rep["tolerance"]["min_knn_spearman"] == gate.TOLERANCES["fp16"].min_rank == 0.98
    # another model's features rank the images differently (measured rho 0.74 on these 20
    # inputs): refused by the rank check alone
    other = build_tiny_model(tmp_path / "other.onnx", 32, 32, features="conv", seed=3)
    rank_only = gate.Tolerance(min_cosine=-1.0, min_rank=0.98)
    with pytest.raises(verify.VerificationError, match="kNN-score rank agreement .* 0.98"):
        quantize.verify_fp16(str(fp32), str(other), names, images, rank_only)
