"""dn2 fit --ray / dn2 score --ray on a real local Ray cluster (2 CPUs), real textile images,
a real Lite0 model, and compared with the local fit and score.

One cluster per module (starting Ray costs ~10-30 s on 2 cores); the commands reuse the
connection the process already has and leave it running; the fixture shuts it down.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from videos import load_frames, read_video, write_video

ray = pytest.importorskip("ray", reason="pip install 'dn2[ray]'")
pq = pytest.importorskip("pyarrow.parquet", reason="pip install 'dn2[ray]'")

from dn2.runtime import fit_cli, ray_video, score_cli  # noqa: E402
from dn2.runtime.detector import Detector  # noqa: E402
from dn2.runtime.fit import fit_bundle  # noqa: E402
from dn2.runtime.ray_embed import load_shards  # noqa: E402
from dn2.runtime.ray_score import score_ray  # noqa: E402

N_FIT = 240  # real nominal textile images the fits see
# Local and Ray embeddings come from the same onnxruntime graph on the same crops, but the
# batches are cut differently (a bad file shifts the local batches; Ray cuts per block), and
# the CPU kernels may sum in another order per batch shape: float32 round-off, ~1e-6
# relative. Scores are squared distances of such embeddings; 1e-4 relative is 100x that.
RTOL = 1e-4


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False
    )
    yield ray
    ray.shutdown()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def model(lite0_at):
    return lite0_at(96)


@pytest.fixture(scope="module")
def data(tmp_path_factory, textile_dirs):
    """Normal training files (real JPEGs + one corrupt file), held-out normal and defect
    images, a 16:9 MJPG video of real frames with sensor noise, and a list file."""
    d = tmp_path_factory.mktemp("raydata")
    nominal = sorted(textile_dirs["nominal"].glob("*.jpg"))
    train = d / "train"
    train.mkdir()
    for p in nominal[:N_FIT]:
        (train / p.name).symlink_to(p)
    (train / "broken.jpg").write_bytes(nominal[0].read_bytes()[:300])  # truncated JPEG
    held = [str(p) for p in nominal[N_FIT : N_FIT + 20]]
    defects = [str(p) for p in sorted(textile_dirs["global"].glob("*.jpg"))[:20]]
    rng = np.random.default_rng(0)
    frames = []
    for f in load_frames(textile_dirs["nominal"], 10, size=180, start=N_FIT + 20):
        wide = cv2.resize(f, (320, 180), interpolation=cv2.INTER_LINEAR)
        noisy = wide.astype(np.int16) + rng.normal(0, 6, wide.shape).astype(np.int16)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    video = write_video(d / "line.avi", frames)
    # the fit video: 40 other normal pieces, each under the camera for 2 frames (near copies,
    # as a line camera sees them), 16:9, sensor noise, MJPG at 25 fps
    fit_frames = []
    for f in load_frames(textile_dirs["nominal"], 40, size=180, start=N_FIT + 30):
        wide = cv2.resize(f, (320, 180), interpolation=cv2.INTER_LINEAR)
        for _ in range(2):
            noisy = wide.astype(np.int16) + rng.normal(0, 6, wide.shape).astype(np.int16)
            fit_frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    fit_video = write_video(d / "fit.avi", fit_frames)
    few = d / "few"
    few.mkdir()
    for p in nominal[N_FIT + 70 : N_FIT + 100]:
        (few / p.name).symlink_to(p)
    bad_video = d / "bad.avi"
    bad_video.write_bytes(b"RIFF not a video at all" * 50)
    listing = d / "score.lst"
    listing.write_text("# held-out normal and defects\n" + "\n".join(held + defects) + "\n")
    return {
        "train": train,
        "held": held,
        "defects": defects,
        "video": video,
        "list": listing,
        "broken": str(train / "broken.jpg"),
        "fit_video": fit_video,
        "few": few,
        "bad_video": bad_video,
    }


@pytest.fixture(scope="module")
def bundles(cluster, model, data, tmp_path_factory):
    """The same images fitted locally and with --ray (2 actors, 1 thread each)."""
    d = tmp_path_factory.mktemp("raybundles")
    # a --ray fit adds no camera variants (augment auto resolves to none there), so the local
    # fit it must equal is the one without them
    local = fit_bundle(
        model, d / "local", images=[str(data["train"])], kmeans=None, augment="none", progress=False
    )
    rc = fit_cli.main(
        [
            str(model),
            str(data["train"]),
            "--output",
            str(d / "ray"),
            "--threads",
            "1",
            "--ray-workers",
            "2",
            "--ray-shards",
            str(d / "shards"),
            "-q",
            "--ray",
        ]
    )
    assert rc == 0
    return local, d / "ray", d / "shards"


def test_fit_ray_matches_local_fit(bundles, data):
    local, remote, shards = bundles
    ml = json.loads((local / "dn2.json").read_text())
    mr = json.loads((remote / "dn2.json").read_text())
    assert mr["fit"]["source"] == "ray" and ml["fit"]["source"] == "images"
    for key in ("model", "score", "bank"):  # the same bundle format and settings
        assert {k: v for k, v in mr[key].items() if k not in ("sha256",)} == {
            k: v for k, v in ml[key].items() if k not in ("sha256",)
        }, key
    assert mr["fit"]["images"] == ml["fit"]["images"] == N_FIT
    assert mr["fit"]["failed"] == ml["fit"]["failed"] == 1
    rl = json.loads((local / "fit_report.json").read_text())
    rr = json.loads((remote / "fit_report.json").read_text())
    assert rr["kept"] == rl["kept"]  # same files, same order
    assert [f[0] for f in rr["failed"]] == [f[0] for f in rl["failed"]] == [data["broken"]]
    np.testing.assert_allclose(mr["threshold"]["value"], ml["threshold"]["value"], rtol=RTOL)
    # the shards hold the embeddings in file order, without pickles
    x, names, failed = load_shards(shards)
    assert x.shape == (N_FIT, 1280) and names == rl["kept"] and failed[0][0] == data["broken"]
    dl, dr = Detector.load(local), Detector.load(remote)
    paths = data["held"] + data["defects"]
    sl = [r.score for r in dl.score_paths(paths)]
    sr = [r.score for r in dr.score_paths(paths)]
    np.testing.assert_allclose(sr, sl, rtol=RTOL)
    assert [s > dr.threshold for s in sr] == [s > dl.threshold for s in sl]
    # the detector separates defects from held-out normal images at all (not a dead model)
    assert np.median(sl[20:]) > np.median(sl[:20])


def test_score_ray_parquet_matches_local_scores(bundles, data, tmp_path, monkeypatch):
    _, remote, _ = bundles
    out = tmp_path / "scores"
    monkeypatch.setattr(ray_video, "SEGMENT_FRAMES", 3)  # 10 frames: 4 read tasks, 3 seeks
    inputs = [f"@{data['list']}", data["broken"], str(data["video"]), str(data["bad_video"])]
    s = score_ray(
        remote,
        inputs + [str(tmp_path / "missing.jpg")],
        out,
        fmt="parquet",
        workers=2,
        progress=False,
    )
    assert s["actors"] == 2 and s["failed"] == 3  # the truncated JPEG, bad video, missing path
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == s["rows"] == 40 + 3 + 10
    json_fields = set(Detector.load(remote).score_paths(data["held"][:1])[0].to_dict())
    assert "norm_score" in json_fields  # every row: the fields of score --json, plus frame
    assert all(json_fields | {"frame"} <= set(r) for r in rows)
    bad = [r for r in rows if r["path"] == str(data["bad_video"])]
    assert len(bad) == 1 and bad[0]["score"] is None and "video" in bad[0]["error"]
    assert bad[0]["norm_score"] is None
    by_path = {r["path"]: r for r in rows if r["frame"] is None}
    det = Detector.load(remote)
    for ref in det.score_paths(data["held"] + data["defects"] + [data["broken"]]):
        got = by_path[ref.path]
        if ref.error:
            assert got["score"] is None and got["anomalous"] is None and got["error"]
        else:
            np.testing.assert_allclose(got["score"], ref.score, rtol=RTOL)
            assert got["anomalous"] == ref.anomalous and got["error"] is None
    assert "no such path" in by_path[str(tmp_path / "missing.jpg")]["error"]
    frames = sorted((r for r in rows if r["frame"] is not None), key=lambda r: r["frame"])
    assert [r["frame"] for r in frames] == list(range(10))
    want = det.score_images(read_video(data["video"]))  # the frames as OpenCV decodes them
    np.testing.assert_allclose([r["score"] for r in frames], want, rtol=RTOL)
    np.testing.assert_allclose([r["norm_score"] for r in frames], want / det.threshold, rtol=RTOL)


def test_score_cli_ray_jsonl(bundles, data, tmp_path, capsys):
    _, remote, _ = bundles
    out = tmp_path / "jsonl"
    rc = score_cli.main(
        [
            str(remote),
            str(data["video"]),
            "--ray-output",
            str(out),
            "--ray-format",
            "jsonl",
            "--video-stride",
            "3",
            "--seconds",
            "0.3",  # 25 fps: frames 0-7 (7 / 25 < 0.3), of which every 3rd
            "--ray-workers",
            "1",
            "--ray",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    lines = [
        json.loads(ln)
        for f in sorted(out.glob("part-*.jsonl"))
        for ln in f.read_text().splitlines()
    ]
    assert [r["frame"] for r in lines] == [0, 3, 6]
    assert all(r["error"] is None and r["score"] > 0 for r in lines)
    assert "3 rows (3 scored, 0 failed)" in capsys.readouterr().err
    rc = score_cli.main([str(remote), str(data["video"]), "--ray"])  # no --ray-output
    assert rc == 2 and "--ray-output" in capsys.readouterr().err


def test_missing_ray_names_the_extra(model, data, tmp_path):
    """Without ray installed, --ray says which extra to install and writes nothing."""
    code = textwrap.dedent(f"""
        import sys
        class NoRay:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "ray":
                    raise ImportError("no ray here")
        sys.meta_path.insert(0, NoRay())
        from dn2.runtime import fit_cli
        sys.exit(fit_cli.main([{str(model)!r}, {str(data["train"])!r}, "-o",
                               {str(tmp_path / "b")!r}, "-q", "--ray"]))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "pip install 'dn2[ray]'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "b").exists()


def test_lean_fit_and_score_never_import_ray(model, data, tmp_path):
    """Local fit and score (the edge box's commands) load no Ray module."""
    bundle = tmp_path / "bundle"
    code = textwrap.dedent(f"""
        import sys
        from dn2.runtime import fit_cli, score_cli
        assert fit_cli.main([{str(model)!r}, {data["held"][0]!r}, {data["held"][1]!r},
                             {data["held"][2]!r}, {data["held"][3]!r}, "-o",
                             {str(bundle)!r}, "-q"]) == 0
        assert score_cli.main([{str(bundle)!r}, {data["defects"][0]!r}, "--json"]) == 0
        print("RAY-MODULES", sorted(m for m in sys.modules if m.split(".")[0] == "ray"))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "RAY-MODULES []" in p.stdout


def test_fit_ray_refuses_a_non_model_before_starting_actors(data, tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not an onnx graph")
    rc = fit_cli.main([str(bad), str(data["train"]), "-o", str(tmp_path / "b"), "-q", "--ray"])
    err = capsys.readouterr().err
    assert rc == 2 and "dn2-fit: error:" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_fit_ray_refuses_live_sources_and_missing_paths(model, data, tmp_path, capsys):
    """--ray embeds image and video files; a camera (fitted locally: the workers cannot share
    it) or a missing path is an error up front, before a cluster starts, as in the local fit."""
    for extra, want in (("0", "without --ray"), (str(tmp_path / "nope"), "no such path")):
        rc = fit_cli.main(
            [str(model), str(data["train"]), extra, "-o", str(tmp_path / "b"), "-q", "--ray"]
        )
        err = capsys.readouterr().err
        assert rc == 2 and want in err and "Traceback" not in err, err
        assert not (tmp_path / "b").exists()


def test_fit_ray_video_matches_local_video_fit(cluster, model, data, tmp_path, monkeypatch):
    """Images and an MJPG video with noise: the frames (--every 2, --seconds 2.9) read as a
    Ray dataset in segments decoded by 2 actors; the same frames, colour, blocked hold-out
    threshold and scores as the local video fit."""
    inputs = [str(data["few"]), str(data["fit_video"])]
    opts = dict(every=2, seconds=2.9)  # 25 fps: frames 0, 2, ..., 72 (72 / 25 < 2.9): 37
    # without camera variants, as a --ray fit is (augment auto resolves to none there)
    local = fit_bundle(
        model, tmp_path / "local", images=inputs, augment="none", progress=False, **opts
    )
    monkeypatch.setattr(ray_video, "SEGMENT_FRAMES", 8)  # 37 frames: 5 read tasks
    rc = fit_cli.main(
        [
            str(model),
            *inputs,
            "--every",
            "2",
            "--seconds",
            "2.9",
            "-o",
            str(tmp_path / "ray"),
            "--threads",
            "1",
            "--ray-workers",
            "2",
            "-q",
            "--ray",
        ]
    )
    assert rc == 0
    ml = json.loads((local / "dn2.json").read_text())
    mr = json.loads((tmp_path / "ray" / "dn2.json").read_text())
    assert (
        mr["fit"]["streams"]
        == ml["fit"]["streams"]
        == [{"source": str(data["fit_video"]), "frames": 37}]
    )
    assert mr["fit"]["temporal_frames"] == ml["fit"]["temporal_frames"] == 37
    assert mr["fit"]["images"] == ml["fit"]["images"] == 30 + 37
    assert mr["score"] == ml["score"] and mr["fit"]["color"] == ml["fit"]["color"]
    assert "blocked hold-out" in ml["threshold"]["calibration"]
    assert mr["threshold"]["calibration"] == ml["threshold"]["calibration"]
    np.testing.assert_allclose(mr["threshold"]["value"], ml["threshold"]["value"], rtol=RTOL)
    rl = json.loads((local / "fit_report.json").read_text())
    rr = json.loads((tmp_path / "ray" / "fit_report.json").read_text())
    assert rr["kept"] == rl["kept"]  # the same images, then the same frames, in time order
    assert rl["kept"][30:32] == [f"{data['fit_video']} frame {i}" for i in (0, 2)]
    frames = read_video(data["video"])  # other normal pieces, and defects
    defects = [cv2.imread(p) for p in data["defects"][:5]]
    dl, dr = Detector.load(local), Detector.load(tmp_path / "ray")
    np.testing.assert_allclose(
        dr.score_images(frames + defects), dl.score_images(frames + defects), rtol=RTOL
    )


def test_gpu_actors_refused_on_a_cluster_without_gpus(
    cluster, model, data, bundles, tmp_path, capsys
):
    """--ray-gpus (or ray_gpus in a --config file) on a cluster whose resources list no GPU
    is a clear error naming what was expected and found, before any actor waits for one."""
    assert "GPU" not in cluster.cluster_resources()
    rc = fit_cli.main(
        [str(model), str(data["few"]), "-o", str(tmp_path / "b"), "--ray-gpus", "1", "-q", "--ray"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "expected a Ray cluster with GPUs, found none" in err, err
    assert "Traceback" not in err and not (tmp_path / "b").exists()
    cfg = tmp_path / "gpu.toml"
    cfg.write_text("ray_gpus = 0.5\n")
    rc = score_cli.main(
        [
            str(bundles[1]),
            str(data["video"]),
            "--config",
            str(cfg),
            "--ray-output",
            str(tmp_path / "s"),
            "--ray",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--ray-gpus 0.5: expected a Ray cluster with GPUs" in err, err
    assert not list((tmp_path / "s").glob("part-*"))


@pytest.mark.parametrize("fourcc,ext", [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_segments_decode_the_frames_of_a_sequential_read(textile_dirs, tmp_path, fourcc, ext):
    """A read task seeks to its first frame; on real MJPG and mp4v (keyframes every 12
    frames) files with sensor noise its frames equal those of one read from the start, and
    the plan takes the frames the local reader takes (--every, --max-frames, --seconds)."""
    rng = np.random.default_rng(1)
    path = str(tmp_path / f"v{ext}")
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 25.0, (320, 180))
    for f in load_frames(textile_dirs["nominal"], 50, size=180):
        wide = cv2.resize(f, (320, 180)).astype(np.int16) + rng.normal(0, 6, (180, 320, 3))
        vw.write(np.clip(wide, 0, 255).astype(np.uint8))
    vw.release()
    whole = read_video(path)
    assert len(whole) == 50
    segs, bad = ray_video.plan_segments([path], every=3, seg_frames=4)
    assert not bad and [s["start"] for s in segs] == [0, 12, 24, 36, 48]
    got = [
        (i, img) for s in segs for i, img in ray_video.read_segment(path, s["start"], s["stop"], 3)
    ]
    assert [i for i, _ in got] == list(range(0, 50, 3))
    assert all(np.array_equal(img, whole[i]) for i, img in got)  # exact: the same decode
    for kw, n in (({"max_frames": 5}, 5), ({"seconds": 1.0}, 9)):  # 1 s at 25 fps: 0..24
        segs, _ = ray_video.plan_segments([path], every=3, **kw)
        assert sum(s["frames"] for s in segs) == n, kw


def test_fit_ray_of_a_video_alone_decides_colour_as_the_local_fit(cluster, model, data, tmp_path):
    """No images: the first batch of frames decides gray vs colour on the driver, as the local
    video fit decides it; --max-frames 30 takes the same frames."""
    video = str(data["fit_video"])
    local = fit_bundle(model, tmp_path / "local", images=[video], max_frames=30, progress=False)
    rc = fit_cli.main(
        [
            str(model),
            video,
            "--max-frames",
            "30",
            "-o",
            str(tmp_path / "ray"),
            "--threads",
            "1",
            "--ray-workers",
            "2",
            "-q",
            "--ray",
        ]
    )
    assert rc == 0
    ml = json.loads((local / "dn2.json").read_text())
    mr = json.loads((tmp_path / "ray" / "dn2.json").read_text())
    assert ml["fit"]["color"]["detected"]["sampled"] > 0  # decided by frames, not defaulted
    assert mr["fit"]["color"] == ml["fit"]["color"]
    assert mr["fit"]["streams"] == ml["fit"]["streams"] == [{"source": video, "frames": 30}]
    np.testing.assert_allclose(mr["threshold"]["value"], ml["threshold"]["value"], rtol=RTOL)
