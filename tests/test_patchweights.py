"""Block weights of the patch features, on real features of real images.

Real textile images (conformal-clip-data) through efficientnet_lite0 (real ImageNet weights,
224 px, ``patches`` output: 40 channels at stride 8 + 112 at stride 16), one with a real object
pasted in and saved through JPEG q90 like a camera frame.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dn2.runtime.embedder import Embedder
from dn2.runtime.errors import Dn2Error
from dn2.runtime.patchscore import PatchScorer, cell_scores, patch_rows, reduce_cells
from dn2.runtime.patchweights import BlockStats, channel_weights, layer_channels


@pytest.fixture(scope="module")
def noms(textile_dirs):
    return sorted(textile_dirs["nominal"].glob("*.jpg"))


@pytest.fixture(scope="module")
def defect(noms, tmp_path_factory):
    from dn2.tools.eval.locset import paste_into

    img, _ = paste_into(cv2.imread(str(noms[902])), "object", seed=5, min_size=0.12, max_size=0.2)
    path = tmp_path_factory.mktemp("pw") / "defect.jpg"
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def test_block_stats_stream_the_variance_and_equalise_the_blocks(lite0_patches, noms):
    emb = Embedder(str(lite0_patches[0]), threads=2)
    ch = layer_channels(emb.patch_spec["layers"], emb.patch_spec["channels"])
    assert ch == [40, 112]
    _, pat = emb.embed_patches_batch(np.stack([emb.prepare(cv2.imread(str(p))) for p in noms[:5]]))
    rows = patch_rows(pat).reshape(-1, pat.shape[1])
    st = BlockStats(ch)
    for r in np.array_split(rows, 7):  # streamed in uneven chunks, as the fit feeds images
        st.add(r)
    var = rows.astype(np.float64).var(axis=0)
    # the streamed sums against numpy's two-pass variance (float64 sums of ~1e4 rows)
    np.testing.assert_allclose(st.ss / st.n - (st.s / st.n) ** 2, var, rtol=1e-6, atol=1e-9)
    w = st.weights()
    assert len(w) == 2 and w[0] > 1.0 > w[1]  # the finer stride-8 block has the smaller spread
    wch = channel_weights(w, ch)
    v = (rows.astype(np.float64) * wch).var(axis=0)
    blocks = [v[:40].sum(), v[40:].sum()]
    assert abs(blocks[0] - blocks[1]) <= 1e-6 * blocks[1]  # equal total variance per block
    assert abs(sum(blocks) - var.sum()) <= 0.5 * var.sum()  # the overall scale is kept


def test_fit_records_the_weights_and_scoring_applies_them(lite0_patches, noms, defect, tmp_path):
    from dn2.runtime.detector import Detector
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.views import View

    kw = dict(mode="both", view=View("full"), fpr=0.2, threads=2, bank_size=1024)
    kw.update(per_image=128, progress=False)
    b = fit_view_bundle(lite0_patches[0], tmp_path / "w", noms[:16], **kw)
    b0 = fit_view_bundle(lite0_patches[0], tmp_path / "n", noms[:16], block_weights=False, **kw)
    det, det0 = Detector.load(b, threads=2), Detector.load(b0, threads=2)
    bw = det.bundle.manifest.patch.extra["block_weights"]
    assert len(bw) == 2 and bw[0] > 1.0 > bw[1]
    assert "block_weights" not in det0.bundle.manifest.patch.extra
    assert det0.view_scorer.patch.weights is None
    vs = det.view_scorer
    np.testing.assert_array_equal(vs.patch.weights, np.repeat(np.float32(bw), [40, 112]))
    # the stored bank is in the weighted space: its stride-8 block spread grew by w0^2
    ratio = det.bundle.patch_bank.data[:, :40].var() / det0.bundle.patch_bank.data[:, :40].var()
    assert 0.5 * bw[0] ** 2 < ratio < 2.0 * bw[0] ** 2  # two different coresets: loose
    paths = [str(noms[520]), str(noms[521]), str(defect)]
    res = det.analyze_paths(paths)
    plain = PatchScorer(vs.patch.bank, vs.patch.k, vs.patch.reduction, vs.patch.topk)
    for r, it in zip(res, vs.viewer.paths(paths)):
        weighted = it.patches * vs.patch.weights[None, :, None, None]
        c = cell_scores(  # the bundle's kernel (the sub-grid kNN by default)
            vs.patch.bank, weighted, vs.patch.k, topk=vs.patch.topk, step=vs.patch.step
        )
        want = float(reduce_cells(c[None], vs.patch.reduction, vs.patch.topk)[0])
        assert abs(r.patch_score - want) <= 1e-5 * want  # float32 rounding of the blockings
        unweighted = float(reduce_cells(plain.cells(it.patches)[None], "topk", vs.patch.topk)[0])
        assert abs(unweighted - want) > 1e-3 * want  # the weights changed the score
        assert r.map is not None and r.map.shape == it.shape
    assert res[2].patch_score > max(res[0].patch_score, res[1].patch_score)


@pytest.mark.parametrize("bad", [[1.0], [1.0, -2.0], [1.0, float("nan")], "1,1", [1.0, "a"]])
def test_stored_weights_that_do_not_fit_are_refused_with_what_was_expected(bad):
    with pytest.raises(Dn2Error) as e:
        channel_weights(bad, [40, 112])
    assert "block_weights" in str(e.value) and "expected 2 positive" in str(e.value)
    assert channel_weights(None, [40, 112]) is None


def test_layer_channels_checks_the_spec():
    assert layer_channels([{"channels": 40}, {"channels": 112}], 152) == [40, 112]
    for bad, total in (([{"channels": 40}], 152), ([{"ch": 1}], 1), (None, 152)):
        with pytest.raises(Dn2Error) as e:
            layer_channels(bad, total)
        assert "patch layers: expected" in str(e.value)


def test_fit_cli_patch_weights_none_and_a_bad_value(lite0_patches, noms, tmp_path, capsys):
    import json

    from dn2.runtime import fit_cli

    args = [str(lite0_patches[0]), *map(str, noms[:8]), "--view", "full", "-q", "--fpr", "0.2"]
    assert fit_cli.main(args + ["--output", str(tmp_path / "b"), "--patch-weights", "none"]) == 0
    extra = json.loads((tmp_path / "b" / "dn2.json").read_text())["signals"]["patch"]
    assert "block_weights" not in json.dumps(extra)
    capsys.readouterr()
    bad = args + ["--output", str(tmp_path / "c"), "--patch-weights", "bogus"]
    assert fit_cli.main(bad) == 2  # a usage error naming the choices, no traceback
    err = capsys.readouterr().err
    assert "--patch-weights" in err and "blocks" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
