"""Patch signal end to end on real images: the export's patches output, fit, maps, calibration.

Real textile images (conformal-clip-data) with real defect crops (scikit-image photos and
textures) pasted at seeded places and sizes, saved through JPEG like a camera would, so the
masks are known. efficientnet_lite0 with its real ImageNet weights, 224 px, exported once.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from dn2.runtime import score_cli
from dn2.runtime.detector import Detector
from dn2.runtime.embedder import Embedder
from dn2.runtime.modelmeta import patch_spec, read_model_meta

N_TRAIN, N_HELD = 40, 40
ALLOWED_OPS = {
    "Cast",
    "Transpose",
    "Mul",
    "Gemm",
    "Add",
    "Conv",
    "Clip",
    "Relu",
    "AveragePool",
    "Resize",
    "Concat",
    "ReduceMean",
    "Shape",
    "Slice",
    "MaxPool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
}


@pytest.fixture(scope="module")
def textile(textile_dirs):
    noms = sorted(textile_dirs["nominal"].glob("*.jpg"))
    return {"train": noms[:N_TRAIN], "held": noms[500 : 500 + N_HELD], "spare": noms[900:]}


@pytest.fixture(scope="module")
def pasted(textile, tmp_path_factory):
    """Held-out normal images with a real object or texture pasted in: (jpg paths, masks)."""
    from dn2.tools.eval.locset import paste_into

    root = tmp_path_factory.mktemp("pasted")
    out = []
    for i, p in enumerate(textile["spare"][:8]):
        base = cv2.imread(str(p))
        img, mask = paste_into(
            base, "object" if i % 2 == 0 else "texture", seed=100 + i, min_size=0.12, max_size=0.2
        )
        path = root / f"defect_{i}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append((path, mask))
    return out


@pytest.fixture(scope="module")
def both_bundle(lite0_patches, textile, tmp_path_factory):
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.views import View

    out = tmp_path_factory.mktemp("b") / "both"
    fit_view_bundle(
        lite0_patches[0],
        out,
        textile["train"],
        mode="both",
        view=View("full"),
        fpr=0.1,
        threads=2,
        bank_size=2048,
        per_image=256,
        progress=False,
    )
    return out


def test_export_patches_output_matches_torch_and_is_described(lite0_patches, textile):
    import onnx
    import torch

    from dn2.export.archs import get_arch
    from dn2.export.patches import build_patch_graph
    from dn2.export.weights import load_weights

    path, report = lite0_patches
    gate = report["verify"]["patches"]
    assert gate["passed"] and gate["min_cosine"] >= 0.9999  # the gate's own fp32 tolerance
    spec = patch_spec(read_model_meta(str(path)))
    assert spec["channels"] == 40 + 112 and spec["grid"] == [28, 28] and spec["stride"] == 8
    assert [(x["stride"], x["channels"]) for x in spec["layers"]] == [(8, 40), (16, 112)]
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"AveragePool", "Resize", "Concat"} <= ops and ops <= ALLOWED_OPS
    # independently of the gate: torch vs onnxruntime on two real textile images
    emb = Embedder(str(path), threads=2)
    x = np.stack([emb.prepare(cv2.imread(str(p))) for p in textile["held"][:2]])
    e, p = emb.embed_patches_batch(x)
    graph = build_patch_graph(
        get_arch("efficientnet_lite0"),
        load_weights(get_arch("efficientnet_lite0"), "imagenet", log=lambda m: None).model,
    )
    with torch.no_grad():
        te, tp = graph(torch.from_numpy(x))
    # float32 on both sides, different kernels: 1e-4 relative is 100x what was measured
    assert np.abs(tp.numpy() - p).max() <= 1e-4 * np.abs(tp.numpy()).max()
    assert np.abs(te.numpy() - e).max() <= 1e-4 * np.abs(te.numpy()).max()


def test_export_patches_fp16_is_gated(tmp_path):
    pytest.importorskip("torch")
    from dn2.export.pipeline import export_model

    rep = export_model(
        "efficientnet_lite0",
        "imagenet",
        str(tmp_path / "m16.onnx"),
        input_size=128,
        precision="fp16",
        patches=True,
        log=lambda m: None,
    )
    assert rep["quantize"]["patches"]["passed"]
    assert rep["quantize"]["patches"]["min_cosine"] >= 0.999  # the gate's fp16 tolerance
    assert patch_spec(read_model_meta(str(tmp_path / "m16.onnx")))["grid"] == [16, 16]


def test_maps_land_on_pasted_defects(both_bundle, pasted):
    from dn2.runtime.patchfit import DEFAULTS

    det = Detector.load(both_bundle, threads=2)
    # the default sub-grid patch kNN, recorded at fit and used for scoring
    assert det.bundle.manifest.patch.extra["cell_step"] == DEFAULTS["cell_step"] == 2
    assert det.view_scorer.patch.step == 2
    res = det.analyze_paths([p for p, _ in pasted])
    hits = 0
    for r, (_, mask) in zip(res, pasted):
        assert r.error is None and r.map.shape == mask.shape and r.map.dtype == np.float32
        # a peak within 4 px of the pasted region counts (the map is smoothed at stride 8)
        near = cv2.dilate(mask, np.ones((9, 9), np.uint8))
        hits += bool(near[r.peak[1], r.peak[0]])
    assert hits >= 7, [(r.peak, r.score) for r in res]
    assert sum(r.anomalous for r in res) >= 6  # pasted real objects / textures are flagged


def test_calibration_holds_target_fpr_in_every_mode(lite0_patches, textile, both_bundle, tmp_path):
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.views import View

    bundles = {"both": both_bundle}
    for mode in ("global", "patch"):
        bundles[mode] = tmp_path / mode
        fit_view_bundle(
            lite0_patches[0],
            bundles[mode],
            textile["train"],
            mode=mode,
            view=View("full"),
            fpr=0.1,
            threads=2,
            bank_size=2048,
            per_image=256,
            progress=False,
        )
    for mode, b in bundles.items():
        det = Detector.load(b, threads=2)
        assert det.mode == mode
        fp = sum(r.anomalous for r in det.analyze_paths(textile["held"], maps=False))
        # target 10 % of 40 held-out normal images = 4; 9 is the binomial 99 % upper bound
        assert fp <= 9, (mode, fp)
        m = json.loads((Path(b) / "dn2.json").read_text())
        assert m["view"]["kind"] == "full" and m["score"]["mode"] == mode


def test_score_cli_writes_maps_peak_and_box(both_bundle, pasted, tmp_path, capsys):
    out = tmp_path / "maps"
    paths = [str(p) for p, _ in pasted[:2]] + [str(tmp_path / "missing.jpg")]
    rc = score_cli.main([str(both_bundle), *paths, "--json", "--maps", str(out)])
    assert rc == 1  # the missing file is reported, the rest scored
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    ok = [x for x in lines if x["error"] is None]
    assert len(ok) == 2
    for x, (p, mask) in zip(ok, pasted[:2]):
        m = np.load(out / f"{Path(p).stem}.npy", allow_pickle=False)
        assert m.shape == mask.shape and m.dtype == np.float32
        assert len(x["peak"]) == 2 and (x["box"] is None or len(x["box"]) == 4)
        png = cv2.imread(str(out / f"{Path(p).stem}.png"))
        assert png.shape[:2] == mask.shape


def test_score_cli_maps_needs_patch_bundle(world_bundle_global, tmp_path, capsys):
    rc = score_cli.main(
        [
            str(world_bundle_global),
            str(world_bundle_global / "model.onnx"),
            "--maps",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 2 and "patch signal" in capsys.readouterr().err


@pytest.fixture(scope="module")
def world_bundle_global(lite0_patches, textile, tmp_path_factory):
    from dn2.runtime.fit import fit_bundle

    out = tmp_path_factory.mktemp("g") / "global"
    fit_bundle(
        lite0_patches[0],
        out,
        images=[str(p) for p in textile["train"][:6]],
        threads=2,
        progress=False,
    )
    return out


def test_streaming_coreset_bounds_memory_and_keeps_rare_patches(lite0_patches, textile, pasted):
    from dn2.runtime.coreset import StreamingCoreset, greedy_coreset
    from dn2.runtime.patchscore import patch_rows

    emb = Embedder(str(lite0_patches[0]), threads=2)
    imgs = [cv2.imread(str(p)) for p in textile["train"][:12]] + [cv2.imread(str(pasted[0][0]))]
    _, pat = emb.embed_patches_batch(np.stack([emb.prepare(im) for im in imgs]))
    rows = patch_rows(pat)
    pool = StreamingCoreset(rows.shape[2], per_image=128, capacity=512, seed=0)
    for r in rows:
        pool.add_image(r)
        assert pool.n <= 512  # never more than the capacity after an image
    assert pool.shrinks >= 1
    allrows = rows.reshape(-1, rows.shape[2])
    core = allrows[greedy_coreset(allrows, 256)]
    rand = allrows[np.random.default_rng(0).choice(len(allrows), 256, replace=False)]

    def coverage(sub):  # the largest distance from any patch to its nearest kept patch
        d = ((allrows[:, None, :] - sub[None, :, :]) ** 2).sum(-1).min(1)
        return float(np.sqrt(d.max()))

    assert coverage(core) < coverage(rand)  # farthest-point keeps the rare (pasted) patches


def test_views_geometry_and_warning():
    import skimage.data

    from dn2.runtime.images import prepare
    from dn2.runtime.modelmeta import ResizeRule
    from dn2.runtime.views import View, stitch, view_inputs, warn_coverage

    img = np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1])
    frame = cv2.resize(img, (1280, 720))
    rule = ResizeRule.for_input_size(224)
    x, rects = view_inputs(frame, View(), rule)
    assert np.array_equal(x[0], prepare(frame, rule))  # crop view == the runtime's resize rule
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert warn_coverage(View(), 720, 1280, rule) < 0.5
        assert warn_coverage(View.parse("tiles=2x4"), 720, 1280, rule) == pytest.approx(1.0)
    assert len(w) == 1 and "never scored" in str(w[0].message)
    view = View.parse("tiles=2x3", roi="40,20,1200,690")
    x, rects = view_inputs(frame, view, rule)
    assert x.shape == (6, 224, 224, 3)
    maps = [np.zeros((28, 28), np.float32) for _ in rects]
    maps[4][10, 20] = 1.0  # row 1, column 1 tile
    m = stitch(maps, rects, 720, 1280)
    iy, ix = np.unravel_index(np.argmax(m), m.shape)
    x0, y0, x1, y1 = rects[4]
    assert x0 + (20 / 28) * (x1 - x0) - 20 <= ix <= x0 + (21 / 28) * (x1 - x0) + 20
    assert y0 + (10 / 28) * (y1 - y0) - 20 <= iy <= y0 + (11 / 28) * (y1 - y0) + 20
    assert m[:20].max() == 0 and m[:, :40].max() == 0  # outside the ROI nothing is scored
    with pytest.raises(Exception, match="roi"):
        View.parse("full", roi="1200,0,200,100").rects(720, 1280, rule)
    with pytest.raises(Exception, match="tiles=RxC"):
        View.parse("tiles=2")


def _camera(frames, path, seed):
    """Frames as a camera delivers them: Gaussian sensor noise (3 levels), mp4v, read back."""
    from videos import read_video

    rng = np.random.default_rng(seed)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (250, 250))
    assert vw.isOpened()
    for f in frames:
        vw.write(np.clip(f.astype(np.int16) + rng.normal(0, 3, f.shape), 0, 255).astype(np.uint8))
    vw.release()
    return read_video(path)


def test_watch_patch_bundle_draws_heatmap_and_reports_peak_and_box(
    lite0_patches, textile, tmp_path
):
    """Fitted on camera frames (noise + mp4v) of normal pieces, watching a camera video of
    normal pieces then pieces with a real object pasted at a seeded place: the alert's event
    says where, the annotated snapshot and video are written."""
    from dn2.runtime.config import WatchConfig
    from dn2.runtime.patchfit import fit_view_bundle
    from dn2.runtime.views import View
    from dn2.runtime.watch.loop import watch
    from dn2.tools.eval.locset import paste_into

    from videos import read_video

    train = _camera([cv2.imread(str(p)) for p in textile["train"]], tmp_path / "fit.mp4", 1)
    (tmp_path / "fit").mkdir()
    for i, f in enumerate(train):
        cv2.imwrite(str(tmp_path / "fit" / f"{i:03d}.png"), f)
    bundle = tmp_path / "video_bundle"
    fit_view_bundle(
        lite0_patches[0],
        bundle,
        [str(tmp_path / "fit")],
        mode="both",
        view=View("full"),
        fpr=0.05,
        threads=2,
        bank_size=2048,
        per_image=256,
        progress=False,
    )
    normal = [cv2.imread(str(p)) for p in textile["held"][:6]]
    bad, masks = [], []
    for p in textile["spare"][10:16]:
        img, m = paste_into(cv2.imread(str(p)), "object", seed=7, min_size=0.18, max_size=0.2)
        bad.append(img)
        masks.append(m)
    video = tmp_path / "line.mp4"
    frames = _camera(normal + bad, video, 2)
    ev, snaps, out = tmp_path / "ev.jsonl", tmp_path / "snaps", tmp_path / "ann.avi"
    scores = tmp_path / "scores.jsonl"
    s = watch(
        str(bundle),
        str(video),
        WatchConfig(
            events=str(ev),
            scores=str(scores),
            snapshots=str(snaps),
            output_video=str(out),
            min_consecutive=2,
            threads=2,
        ),
    )
    assert s.frames_scored == len(frames)
    events = [json.loads(x) for x in ev.read_text().splitlines()]
    start = [e for e in events if e["type"] == "alert_start"]
    assert start and start[0]["frame"] >= len(normal), events  # opens on the defect pieces
    e = start[0]
    mask = masks[e["peak_frame"] - len(normal)]
    near = cv2.dilate(mask, np.ones((9, 9), np.uint8))  # 4 px slack: a smoothed stride-8 map
    assert near[e["peak"][1], e["peak"][0]]
    assert e["box"] is not None and len(e["box"]) == 4
    assert Path(e["snapshot_annotated"]).is_file() and Path(e["snapshot"]).is_file()
    ann = cv2.imread(e["snapshot_annotated"])
    raw = cv2.imread(e["snapshot"])
    assert ann.shape == raw.shape and np.abs(ann.astype(int) - raw.astype(int)).max() > 50
    assert len(read_video(out)) == len(frames)
    # The per-frame scores carry the map's peak value: every frame has one, and the defect
    # pieces' peaks sit above the normal pieces' (the pasted object is what the map sees).
    rows = [json.loads(x) for x in scores.read_text().splitlines()]
    peaks = [r["map_peak"] for r in rows]
    assert len(rows) == len(frames) and all(p is not None for p in peaks)
    n_norm = len(normal)  # one frame per piece: the normal pieces come first
    assert max(peaks[n_norm:]) > max(peaks[:n_norm])
