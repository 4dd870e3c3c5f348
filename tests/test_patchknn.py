"""The patch kNN kernel against a float64 brute force, on real patch features.

Real textile images (conformal-clip-data) through efficientnet_lite0 (real ImageNet weights,
224 px, ``patches`` output): a bank of normal patch rows, queries from held-out normal images
and one with a real object pasted in (JPEG q90), so distances span normal and defect cells.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dn2.runtime.bank import ExactBank, build_bank
from dn2.runtime.embedder import Embedder
from dn2.runtime.patchscore import cell_scores, nearest_sq, patch_rows, prepared_bank


@pytest.fixture(scope="module")
def feats(lite0_patches, textile_dirs, tmp_path_factory):
    from dn2.tools.eval.locset import paste_into

    noms = sorted(textile_dirs["nominal"].glob("*.jpg"))
    emb = Embedder(str(lite0_patches[0]), threads=2)
    imgs = [cv2.imread(str(p)) for p in noms[:6] + noms[500:502]]
    img, _ = paste_into(cv2.imread(str(noms[900])), "object", seed=3, min_size=0.12, max_size=0.2)
    path = tmp_path_factory.mktemp("knn") / "defect.jpg"
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    imgs.append(cv2.imread(str(path)))
    _, pat = emb.embed_patches_batch(np.stack([emb.prepare(im) for im in imgs]))
    bank_rows = patch_rows(pat[:6]).reshape(-1, pat.shape[1])
    keep = np.random.default_rng(0).choice(len(bank_rows), 1500, replace=False)
    return np.ascontiguousarray(bank_rows[keep]), pat[6:]  # bank rows; 3 query images


def brute(bank_rows, q, k):
    d = ((q[:, None, :].astype(np.float64) - bank_rows[None].astype(np.float64)) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_sq_matches_brute_force(feats, k):
    bank_rows, pat = feats
    bank = build_bank(bank_rows, "exact")
    q = patch_rows(pat).reshape(-1, pat.shape[1])
    ref = brute(bank_rows, q, k)
    for block in (1024, 97):  # one block, and blocks that do not divide the 588 query rows
        got = nearest_sq(bank, q, k, block_rows=block)
        assert got.dtype == np.float32 and got.shape == (len(q),)
        # float32 sgemm on norms of ~1e2-1e3: 1e-4 relative plus a small absolute floor
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3 * ref.mean())
    # the pasted object's cells are far from the bank, the normal images' are not
    per_img = ref.reshape(len(pat), -1).max(axis=1)
    assert per_img[2] > 1.5 * per_img[:2].max()
    # the same distances as the bank's own k-nearest search (ids and sorting kept there)
    np.testing.assert_allclose(
        np.sqrt(np.maximum(got, 0)).reshape(len(pat), *pat.shape[2:]),
        np.sqrt(bank.search(q, k)[0].mean(axis=1)).reshape(len(pat), *pat.shape[2:]),
        rtol=1e-3,  # the sgemm's rounding differs between the two blockings
        atol=1e-3,
    )
    np.testing.assert_allclose(
        cell_scores(bank, pat, k).ravel(), np.sqrt(ref), rtol=1e-4, atol=1e-2
    )


def test_prepared_bank_built_once_and_again_after_add(feats):
    bank_rows, pat = feats
    bank = ExactBank(bank_rows.shape[1])
    bank.add(bank_rows[:1000])
    a = prepared_bank(bank)
    assert a.shape == (1000, bank_rows.shape[1] + 1) and a.dtype == np.float32
    np.testing.assert_allclose(a[:, :-1], -2.0 * bank_rows[:1000])
    np.testing.assert_allclose(
        a[:, -1], (bank_rows[:1000].astype(np.float64) ** 2).sum(1), rtol=1e-5
    )
    assert prepared_bank(bank) is a  # cached: not rebuilt per call
    from dn2.runtime import patchscore

    fresh = build_bank(bank_rows[:500], "exact")
    patchscore.PatchScorer(fresh)
    assert fresh in patchscore._PREPARED  # the scorer prepares its bank at load
    bank.add(bank_rows[1000:])
    b = prepared_bank(bank)
    assert b.shape[0] == len(bank_rows)
    q = patch_rows(pat[2:]).reshape(-1, pat.shape[1])
    np.testing.assert_allclose(nearest_sq(bank, q), brute(bank_rows, q, 1), rtol=1e-4, atol=1e-2)


def test_pruned_kernel_keeps_the_top_cells_exact(feats):
    from dn2.runtime.patchscore import pruned_sq, sub_bank

    bank_rows, pat = feats
    bank = build_bank(bank_rows, "exact")
    assert sub_bank(bank, 256).n == 256 and sub_bank(bank, 256) is sub_bank(bank, 256)
    pruned_any = 0
    for img in pat:  # one image at a time, as the scorer calls it
        q = patch_rows(img[None]).reshape(-1, pat.shape[1])
        exact = nearest_sq(bank, q)
        for topk in (1, 10):
            got = pruned_sq(bank, q, 1, topk, 256)
            # an upper bound everywhere (float32 rounding: 1e-5 relative)
            assert np.all(got >= exact * (1 - 1e-5) - 1e-4)
            top = np.sort(np.sqrt(exact))[-topk:]
            np.testing.assert_allclose(np.sort(np.sqrt(got))[-topk:], top, rtol=1e-5)
            pruned_any += int(np.sum(got > exact * (1 + 1e-4) + 1e-3))
    assert pruned_any > 0  # the sub-bank bound left cells out: the pruning ran


def test_fit_records_prune_and_scores_match_the_exact_kernel(lite0_patches, textile_dirs, tmp_path):
    from dn2.runtime.detector import Detector
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.patchscore import PatchScorer, reduce_cells
    from dn2.runtime.views import View
    from dn2.tools.eval.locset import paste_into

    noms = sorted(textile_dirs["nominal"].glob("*.jpg"))
    img, _ = paste_into(cv2.imread(str(noms[901])), "object", seed=4, min_size=0.12, max_size=0.2)
    cv2.imwrite(str(tmp_path / "defect.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    out = fit_view_bundle(
        lite0_patches[0],
        tmp_path / "b",
        noms[:16],
        mode="both",
        view=View("full"),
        fpr=0.2,
        threads=2,
        bank_size=1024,
        per_image=128,
        prune=128,
        progress=False,
    )
    det = Detector.load(out, threads=2)
    assert det.bundle.manifest.patch.extra["prune"] == 128
    vs = det.view_scorer
    assert vs.patch.prune == 128
    paths = [str(noms[510]), str(noms[511]), str(tmp_path / "defect.jpg")]
    res = det.analyze_paths(paths)
    exact = PatchScorer(
        vs.patch.bank, vs.patch.k, vs.patch.reduction, vs.patch.topk, weights=vs.patch.weights
    )
    for r, it in zip(res, vs.viewer.paths(paths)):
        c = exact.cells(it.patches)
        want = float(reduce_cells(c[None], exact.reduction, exact.topk)[0])
        assert abs(r.patch_score - want) <= 1e-5 * want  # float32 rounding of two blockings
        assert r.map is not None and r.map.shape == it.shape
    assert res[2].patch_score > max(res[0].patch_score, res[1].patch_score)


def test_fit_cli_patch_prune_bad_value_is_a_clear_error(
    lite0_patches, textile_dirs, tmp_path, capsys
):
    from dn2.runtime import fit_cli

    noms = sorted(textile_dirs["nominal"].glob("*.jpg"))[:4]
    args = [str(lite0_patches[0]), *map(str, noms), "--output", str(tmp_path / "b"), "-q"]
    assert fit_cli.main(args + ["--patch-prune", "-1"]) == 2
    err = capsys.readouterr().err
    assert "prune" in err and "-1" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
