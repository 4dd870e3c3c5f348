"""Mode both's combination rules on real scores: a real Lite0 model, real textile images, real
pasted defects saved through JPEG; every rule is fitted on held-out normal scores only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from dn2.runtime.combine import RULES, _log_tail, apply_rule, fit_rule, pair_correlation, rule_of
from dn2.runtime.detector import Detector
from dn2.runtime.errors import Dn2Error
from dn2.runtime.threshold import conformal_quantile

N_TRAIN, N_HELD, N_PASTED = 40, 40, 8
FPR = 0.1


@pytest.fixture(scope="module")
def scored(lite0_patches, textile_dirs, tmp_path_factory):
    """A both bundle (default rule) and the raw scores of held-out normal and pasted images."""
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.views import View
    from dn2.tools.eval.locset import paste_into

    noms = sorted(textile_dirs["nominal"].glob("*.jpg"))
    root = tmp_path_factory.mktemp("combine")
    bundle = root / "both"
    fit_view_bundle(
        lite0_patches[0],
        bundle,
        noms[:N_TRAIN],
        mode="both",
        view=View("full"),
        fpr=FPR,
        threads=2,
        bank_size=2048,
        per_image=256,
        progress=False,
    )
    pasted = []
    for i, p in enumerate(noms[700 : 700 + N_PASTED]):
        kind = "object" if i % 2 == 0 else "texture"
        img, _ = paste_into(cv2.imread(str(p)), kind, seed=300 + i, min_size=0.12, max_size=0.2)
        pasted.append(root / f"pasted_{i}.jpg")
        cv2.imwrite(str(pasted[-1]), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    det = Detector.load(bundle, threads=2)
    held = det.analyze_paths(noms[500 : 500 + N_HELD], maps=False)
    bad = det.analyze_paths(pasted, maps=False)
    return bundle, det, held, bad


def test_manifest_keeps_the_rule_and_the_pairs_and_the_detector_applies_it(scored):
    bundle, det, held, bad = scored
    m = json.loads((Path(bundle) / "dn2.json").read_text())
    rule = m["signals"]["combine"]
    assert rule["rule"] == "cfisher" and m["score"]["combine"] == "cfisher"  # the default
    pairs = m["signals"]["calibration_pairs"]
    assert len(pairs["global"]) == len(pairs["patch"]) == N_TRAIN  # every image calibrated
    # the stored mean / sd are those of the held-out pairs
    assert rule["global"]["mean"] == pytest.approx(np.mean(pairs["global"]), rel=1e-9)
    assert rule["patch"]["std"] == pytest.approx(np.std(pairs["patch"], ddof=1), rel=1e-9)
    # and the correlation and weight are those of the same pairs
    rho = min(max(np.corrcoef(pairs["global"], pairs["patch"])[0, 1], 0.0), 1.0)
    assert rule["rho"] == pytest.approx(rho, abs=1e-12)
    assert rule["patch_weight"] == pytest.approx((1.0 - rho) ** 2, abs=1e-12)
    for r in held + bad:
        want = float(apply_rule(rule, r.global_score, r.patch_score)[0])
        assert r.score == pytest.approx(want, rel=1e-5, abs=1e-6)  # float32 round trip
        assert r.anomalous == (r.score > det.threshold)


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_holds_fpr_on_held_out_normals_and_flags_pasted_defects(scored, rule):
    bundle, _, held, bad = scored
    m = json.loads((Path(bundle) / "dn2.json").read_text())
    pairs = m["signals"]["calibration_pairs"]
    gc, pc = np.asarray(pairs["global"]), np.asarray(pairs["patch"])
    params = fit_rule(
        rule,
        gc,
        pc,
        m["signals"]["global"]["threshold"]["value"],
        m["signals"]["patch"]["threshold"]["value"],
    )
    thr = conformal_quantile(apply_rule(params, gc, pc), FPR)["value"]

    def decide(rs):
        s = apply_rule(params, [r.global_score for r in rs], [r.patch_score for r in rs])
        return s > thr

    fp = int(decide(held).sum())
    # target 10 % of 40 held-out normal images = 4; 9 is the binomial 99 % upper bound
    assert fp <= 9, (rule, fp)
    assert int(decide(bad).sum()) >= 6, rule  # real objects / textures pasted at 12-20 %


def _real_pairs_and_tests(scored):
    bundle, _, held, bad = scored
    m = json.loads((Path(bundle) / "dn2.json").read_text())
    gc = np.asarray(m["signals"]["calibration_pairs"]["global"])
    pc = np.asarray(m["signals"]["calibration_pairs"]["patch"])
    g = np.asarray([r.global_score for r in held + bad])
    p = np.asarray([r.patch_score for r in held + bad])
    return gc, pc, g, p


def test_z_rules_do_not_depend_on_a_signals_units(scored):
    """Scaling one signal (another model, another distance) leaves a z-rule's ranking alone."""
    gc, pc, g, p = _real_pairs_and_tests(scored)
    for rule in ("zmax", "zsum", "fisher", "cfisher"):
        a = apply_rule(fit_rule(rule, gc, pc, 1.0, 1.0), g, p)
        b = apply_rule(fit_rule(rule, 1e3 * gc + 5.0, pc, 1.0, 1.0), 1e3 * g + 5.0, p)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # float32 outputs


def test_cfisher_weighs_the_patch_by_the_pairs_correlation_on_real_scores(scored):
    """The weight follows the normal pairs: a patch signal that repeats the global one counts
    nothing, an independent one counts as in plain Fisher (the real pooled and patch scores of
    the textile images, recombined)."""
    gc, pc, g, p = _real_pairs_and_tests(scored)

    def cf(gc_, pc_, g_, p_):
        return apply_rule(fit_rule("cfisher", gc_, pc_, 1.0, 1.0), g_, p_)

    # the formula, term by term, on the real pairs as fitted
    rule = fit_rule("cfisher", gc, pc, 1.0, 1.0)
    zg = (g - gc.mean()) / gc.std(ddof=1)
    zp = (p - pc.mean()) / pc.std(ddof=1)
    want = -2.0 * (_log_tail(zg) + rule["patch_weight"] * _log_tail(zp))
    np.testing.assert_allclose(cf(gc, pc, g, p), want, rtol=1e-5)  # float32 output
    # patch = an affine copy of the global scores: rho = 1, the rule ranks as the global signal
    twin_c, twin = 3.0 * gc + 1.0, 3.0 * g + 1.0
    assert pair_correlation(gc, twin_c) == pytest.approx(1.0, abs=1e-9)
    assert (
        np.argsort(cf(gc, twin_c, g, twin), kind="stable") == np.argsort(g, kind="stable")
    ).all()
    # patch scores paired with the global ones in reverse order (rho <= 0): plain Fisher
    order = np.argsort(gc)
    anti = np.empty_like(pc)
    anti[order] = np.sort(pc)[::-1]
    assert pair_correlation(gc, anti) == 0.0
    np.testing.assert_allclose(
        cf(gc, anti, g, p), apply_rule(fit_rule("fisher", gc, anti, 1.0, 1.0), g, p), rtol=1e-6
    )


def test_cfisher_on_strongly_correlated_real_pairs_holds_fpr_and_keeps_the_global_order(scored):
    """Real pairs made to vary together (patch + a multiple of the global, as on Fashion-MNIST):
    the weight drops, the conformal threshold still holds its rate on the held-out normals."""
    bundle, _, held, bad = scored
    gc, pc, g, p = _real_pairs_and_tests(scored)
    lam = 3.0 * pc.std() / gc.std()  # global's share large enough for rho ~ 0.9
    pc2, p2 = pc + lam * gc, p + lam * g
    rule = fit_rule("cfisher", gc, pc2, 1.0, 1.0)
    assert 0.8 < rule["rho"] < 1.0 and rule["patch_weight"] < 0.04
    thr = conformal_quantile(apply_rule(rule, gc, pc2), FPR)["value"]
    s = apply_rule(rule, g, p2)
    n = len(held)
    assert int((s[:n] > thr).sum()) <= 9  # 10 % of 40 = 4; 9 is the binomial 99 % bound
    # nearly the global signal's order: Spearman of the decision and the global score
    from scipy.stats import spearmanr

    assert spearmanr(s, g)[0] > 0.95  # vs plain Fisher's weight 1 on the same pairs:
    assert (
        spearmanr(s, g)[0] > spearmanr(apply_rule(fit_rule("fisher", gc, pc2, 1, 1), g, p2), g)[0]
    )


def test_older_bundles_without_a_stored_rule_keep_the_threshold_max():
    rule = rule_of(None, "max", 2.0, 4.0)
    assert rule["rule"] == "max"
    np.testing.assert_allclose(apply_rule(rule, [1.0, 3.0], [6.0, 2.0]), [1.5, 1.5])


def test_a_damaged_stored_rule_is_refused_with_what_was_expected():
    good = fit_rule("fisher", np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 8.0]), 3.0, 8.0)
    assert rule_of(good, "fisher", 3.0, 8.0) == good
    for broken, what in (
        ({**good, "rule": "median"}, "'rule' one of"),
        ({**good, "global": {"mean": 1.0, "std": 0.0}}, "std > 0"),
        ({**good, "patch_threshold": float("nan")}, "finite number patch_threshold"),
        ("fisher", "a mapping"),
    ):
        with pytest.raises(Dn2Error, match=what):
            rule_of(broken, "fisher", 3.0, 8.0)
    cf = fit_rule(
        "cfisher", np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 7.0, 6.0, 8.0]), 4.0, 8.0
    )
    assert rule_of(cf, "cfisher", 4.0, 8.0) == cf
    for broken in (
        {**cf, "patch_weight": 1.0},
        {**cf, "rho": 1.5},
        {k: v for k, v in cf.items() if k != "rho"},
    ):
        with pytest.raises(Dn2Error, match="patch_weight"):
            rule_of(broken, "cfisher", 4.0, 8.0)
    # a bundle fitted with plain fisher (before cfisher was the default) reads as it was
    old = {k: v for k, v in good.items()}
    assert rule_of(old, "cfisher", 3.0, 8.0)["rule"] == "fisher"


def test_fisher_tail_is_exact_near_and_finite_far():
    z = np.array([-3.0, 0.0, 1.0, 4.0, 7.9])
    want = [math.log(0.5 * math.erfc(v / math.sqrt(2))) for v in z]
    np.testing.assert_allclose(_log_tail(z), want, rtol=1e-9)
    far = _log_tail(np.array([8.1, 20.0, 40.0]))
    assert np.isfinite(far).all() and (np.diff(far) < 0).all()
    # past z = 8 the asymptotic series agrees with erfc to 1e-4 relative (erfc(8.1/sqrt2) ok)
    assert far[0] == pytest.approx(math.log(0.5 * math.erfc(8.1 / math.sqrt(2))), rel=1e-4)
