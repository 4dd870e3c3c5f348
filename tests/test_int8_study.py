"""The int8 study's measures: the gate's rank agreement and cosines over the study's parts."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy", reason="the gate's Spearman: pip install 'dn2[export]'")

from dn2.tools.studies.int8 import agreement, format_table, int8_flags  # noqa: E402


def _slices():
    return {
        "photos": slice(0, 16),
        "fmnist_test": slice(16, 40),
        "textile_held": slice(40, 50),
        "textile_global": slice(50, 55),
        "textile_local": slice(55, 60),
    }


def test_agreement_is_perfect_for_a_copy_and_drops_with_noise():
    rng = np.random.default_rng(0)
    ref = rng.random((60, 32)).astype(np.float32)
    same = agreement(ref, ref.copy(), _slices())
    assert same["cos_min"] == pytest.approx(1.0) and same["rank_gate"] == pytest.approx(1.0)
    assert same["rank_textile"] == pytest.approx(1.0) and same["rank_fmnist"] == pytest.approx(1.0)
    noisy = agreement(ref, ref + rng.normal(0, 0.3, ref.shape).astype(np.float32), _slices())
    # noise of the order of the features' spread scrambles the kNN order: well below 1
    assert noisy["cos_min"] < 0.99 and noisy["rank_textile"] < 0.9 and noisy["rank_gate"] < 0.9
    table = format_table([{"setting": "x", "kernels": "default", **noisy}])
    assert table.splitlines()[0].startswith("| setting | kernels | cos min")
    assert f"{noisy['rank_gate']:.4f}" in table


def test_int8_flags_are_the_simd_ones():
    flags = int8_flags()
    assert all(
        f in ("avx2", "fma", "f16c") or "avx512" in f or "vnni" in f or "amx" in f for f in flags
    )
