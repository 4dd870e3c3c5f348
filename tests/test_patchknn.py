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


@pytest.mark.parametrize("step", [2, 3])
def test_subgrid_kernel_keeps_the_top_cells_exact_and_the_map(feats, step):
    from dn2.runtime.patchscore import SIGMA, frame_map, reduce_cells, subgrid_sq

    bank_rows, pat = feats
    bank = build_bank(bank_rows, "exact")
    h, w = pat.shape[2:]
    approx = same_top = 0
    for img in pat:  # one model input at a time, as the scorer calls it
        q = patch_rows(img[None]).reshape(-1, pat.shape[1])
        exact = np.sqrt(nearest_sq(bank, q)).reshape(h, w)
        got = np.sqrt(subgrid_sq(bank, q, h, w, 1, 10, step)).reshape(h, w)
        # the sub-grid cells (every step-th and the last of each axis) are exact
        iy = sorted({*range(0, h, step), h - 1})
        ix = sorted({*range(0, w, step), w - 1})
        sub = np.ix_(iy, ix)
        np.testing.assert_allclose(got[sub], exact[sub], rtol=1e-5)  # float32 sgemm blocks
        # the 10 highest cells of the result are exact distances of those cells, and the
        # image score is read from them: never above the exact one
        top = np.argsort(-got.ravel())[:10]
        np.testing.assert_allclose(got.ravel()[top], exact.ravel()[top], rtol=1e-5)
        same_top += set(top) == set(np.argsort(-exact.ravel())[:10])
        for red, t in (("max", 1), ("topk", 10)):
            a = float(reduce_cells(exact[None], red, t)[0])
            b = float(reduce_cells(got[None], red, t)[0])
            assert b <= a * (1 + 1e-5)
            # measured on these features within 2 % of the exact score (refined around
            # the highest sub-grid cells); a broken refinement loses far more
            assert b >= 0.97 * a
        # cells left interpolated exist (the kernel skipped work) and the smoothed maps agree
        approx += int(np.sum(np.abs(got - exact) > 1e-3 * exact.max()))
        rect = [(0, 0, 224, 224)]
        m_got = frame_map([got], rect, 224, 224, 224, SIGMA)
        m_ref = frame_map([exact], rect, 224, 224, 224, SIGMA)
        # the map's Gaussian (2 cells) smooths over the interpolation, which can only lower
        # a cell between exact ones a little: within 5 % of the map's level everywhere
        # (measured <= 2.9 % at step 2, 4.1 % at step 3 on these images) and the peak
        # within one cell (8 px)
        assert np.abs(m_got - m_ref).max() <= 0.05 * m_ref.max()
        p_got = np.unravel_index(np.argmax(m_got), m_got.shape)
        p_ref = np.unravel_index(np.argmax(m_ref), m_ref.shape)
        assert max(abs(p_got[0] - p_ref[0]), abs(p_got[1] - p_ref[1])) <= 8
    assert approx > 0.3 * len(pat) * h * w  # most cells off the sub-grid were not scored
    # the refined top cells are the exact kNN's: all 3 images here (the pasted object's
    # cells cluster; a normal image's scattered top cells are the harder case, so 2 of 3)
    assert same_top >= 2
    # the pasted object is the image whose score stands out, as with the exact kernel
    s = [
        float(np.sqrt(subgrid_sq(bank, patch_rows(i[None])[0], h, w, 1, 1, step)).max())
        for i in pat
    ]
    assert s[2] > 1.2 * max(s[:2])


def test_subgrid_scorer_equals_the_kernel_per_input(feats):
    from dn2.runtime.patchscore import PatchScorer, subgrid_sq

    bank_rows, pat = feats
    bank = build_bank(bank_rows, "exact")
    h, w = pat.shape[2:]
    ps = PatchScorer(bank, step=2)
    cells = ps.cells(pat)  # three model inputs of one frame (as tiles): each its own sub-grid
    for i, img in enumerate(pat):
        want = np.sqrt(subgrid_sq(bank, patch_rows(img[None])[0], h, w, 1, 10, 2)).reshape(h, w)
        np.testing.assert_allclose(cells[i], want, rtol=1e-5)  # float32 sgemm blockings
    np.testing.assert_allclose(PatchScorer(bank).cells(pat), cell_scores(bank, pat), rtol=1e-5)


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
    assert fit_cli.main(args + ["--patch-cell-step", "0"]) == 2
    err = capsys.readouterr().err
    assert "cell_step" in err and "0" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
    # a good value reaches the bundle and the scorer
    from dn2.runtime.detector import Detector

    noms = sorted(textile_dirs["nominal"].glob("*.jpg"))[:12]
    args = [str(lite0_patches[0]), *map(str, noms), "--output", str(tmp_path / "b"), "-q"]
    assert fit_cli.main(args + ["--patch-cell-step", "3", "--threads", "2"]) == 0
    det = Detector.load(tmp_path / "b", threads=2)
    assert det.bundle.manifest.patch.extra["cell_step"] == 3 == det.view_scorer.patch.step
