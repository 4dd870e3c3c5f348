"""Evidence: DN2 with real-weight EfficientNet-Lite0 on the simulated textile set shipped by
PyPI conformal-clip-data (nominal / global / local defects).

Fit on nominal images only; score held-out nominal images and global defects; global-defect
ROC-AUC must reach 0.90 and the held-out false-positive rate must sit near the target.
Subsampled (seeded) to keep CI time modest: 200 train, 200 held-out normal, 100 global,
100 local images at 224 px.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dn2.runtime.detector import Detector
from dn2.runtime.fit import fit_bundle

N_TRAIN, N_HELD, N_DEFECT = 200, 200, 100
FPR = 0.05


def auroc(normal, anomalous) -> float:
    """P(anomalous score > normal score), ties counted half (Mann-Whitney U / (n m))."""
    n, a = np.asarray(normal, np.float64), np.asarray(anomalous, np.float64)
    gt = (a[:, None] > n[None, :]).sum()
    eq = (a[:, None] == n[None, :]).sum()
    return float((gt + 0.5 * eq) / (a.size * n.size))


@pytest.mark.slow
def test_textile_global_defects_auroc_and_heldout_fpr(lite0_model, textile_dirs, tmp_path):
    rng = np.random.default_rng(0)
    nominal = sorted(textile_dirs["nominal"].glob("*.jpg"))
    assert len(nominal) >= N_TRAIN + N_HELD, f"found {len(nominal)} nominal images"
    pick = rng.permutation(len(nominal))
    train = [str(nominal[i]) for i in pick[:N_TRAIN]]
    held = [str(nominal[i]) for i in pick[N_TRAIN : N_TRAIN + N_HELD]]
    glob_ = sorted(textile_dirs["global"].glob("*.jpg"))
    local = sorted(textile_dirs["local"].glob("*.jpg"))
    glob_ = [str(glob_[i]) for i in rng.choice(len(glob_), N_DEFECT, replace=False)]
    local = [str(local[i]) for i in rng.choice(len(local), N_DEFECT, replace=False)]

    bundle = fit_bundle(
        lite0_model, tmp_path / "textile", images=train, k=2, fpr=FPR, threads=2, progress=False
    )
    det = Detector.load(bundle, threads=2)

    def scores(paths):
        res = det.score_paths(paths)
        assert not [r.error for r in res if r.error], "every shipped image must be readable"
        return np.array([r.score for r in res])

    s_held, s_glob, s_local = scores(held), scores(glob_), scores(local)
    auc_g, auc_l = auroc(s_held, s_glob), auroc(s_held, s_local)
    fpr = float(np.mean(s_held > det.threshold))
    print(
        json.dumps(
            {
                "auroc_global": round(auc_g, 4),
                "auroc_local": round(auc_l, 4),
                "heldout_fpr": round(fpr, 4),
                "target_fpr": FPR,
                "threshold": det.threshold,
            }
        )
    )
    assert auc_g >= 0.90
    # FPR tolerance: the measured rate on 200 held-out normals has binomial sd
    # sqrt(.05*.95/200) = 0.015, and the threshold estimated from 200 leave-one-out scores
    # adds about the same again -> combined sd ~0.022; 3 sd = 0.065.
    assert abs(fpr - FPR) <= 0.065
    # local defects (small spots) are reported, not asserted: a 224 px globally pooled
    # embedding barely sees them (measured ROC-AUC ~0.58 here); the global ones are what it must catch.


@pytest.mark.slow
def test_l2norm_study_tool_scores_both_variants_on_the_same_split(
    lite0_model, textile_dirs, monkeypatch, capsys
):
    from dn2.tools.studies import l2norm as l2norm_study

    monkeypatch.setattr(l2norm_study, "N_TRAIN", 20)  # small split: a smoke run of the tool
    monkeypatch.setattr(l2norm_study, "N_HELD", 20)
    monkeypatch.setattr(l2norm_study, "N_DEFECT", 10)
    rows = l2norm_study.study(str(lite0_model), [0], threads=2)
    assert [(r["seed"], r["l2norm"]) for r in rows] == [(0, False), (0, True)]
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("auroc_global", "auroc_local"))
    # global defects are visible to the trunk even on 20 training images, either way
    assert min(r["auroc_global"] for r in rows) > 0.7
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
