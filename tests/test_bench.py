"""dn2-bench: a tiny real run (resnet18, random weights, 64 px, a few small frames).

Checks the JSON schema the README promises, that every stage took time, that end-to-end covers
the stages, that the FLOP count matches torch's own Conv shapes, and that the three pipelines
compute the same embedding function. No speed is asserted: speed lives in BENCHMARKS.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="dn2-bench compares against torch: pip install 'dn2[export]'")

from dn2.tools.bench import cli  # noqa: E402
from dn2.tools.bench.pipelines import STAGES, make_batches  # noqa: E402
from dn2.tools.bench.report import GOALS, evaluate_goals, format_tables  # noqa: E402
from dn2.tools.bench.run import read_streams, run_bench  # noqa: E402

TINY = dict(
    input_size=64,
    threads=1,
    n_images=7,  # >= the gate's 6 images for a rank agreement; odd, so batches of 2 wrap
    passes=1,
    batch_sizes=(1, 2),
    frame_size=(320, 240),
    bank_size=40,
    quick=True,
)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def report(work):
    return run_bench("resnet18", "none", work_dir=str(work), log=lambda m: None, **TINY)


def test_report_schema(report):
    json.dumps(report)  # the whole report must serialise
    assert report["schema"] == "dn2-bench-2"
    pipes = report["pipelines"]
    names = [p["name"] for p in pipes]
    # three pipelines x two batch sizes, each name says which pipeline it is
    assert len(pipes) == 6
    for kind in ("torch", "fp32", "int8"):
        assert sum(kind in n for n in names) == 2, names
    for p in pipes:
        assert p["img_per_s"] > 0
        assert p["latency_ms_p95"] >= p["latency_ms_p50"] > 0
        # 7 images in full batches of 2 wrap around to 8 images
        assert p["images"] == (7 if p["batch"] == 1 else 8)
        assert p["x_torch_eager"] > 0
        assert p["model_gflops_per_s"] > 0 and p["model_pct_of_sgemm_peak"] > 0
    # every goal of the table has a row, measured or saying why not
    assert {g["goal"] for g in report["goals"]} == {g[0] for g in GOALS}
    assert [g["goal"] for g in report["goals"]] == sorted(
        (g["goal"] for g in report["goals"]), key=[g[0] for g in GOALS].index
    )
    missing = {g["goal"] for g in report["goals"] if g["met"] is None}
    assert missing == {"int8_auroc", "streams"}  # no --accuracy, no --streams-json here
    assert report["sgemm"]["gflops"] > 0
    assert report["machine"]["cores"] >= 1


def test_stage_times_positive_and_e2e_covers_them(report):
    for p in report["pipelines"]:
        st = p["stages_ms_per_image"]
        assert set(st) == set(STAGES)
        assert all(st[s] > 0 for s in STAGES), (p["name"], st)
        # e2e wraps the stage timers; rounding to 4 decimals of a ms is the only slack
        assert p["e2e_ms_per_image"] >= p["stages_sum_ms_per_image"] - 1e-4
        assert p["e2e_ms_per_image"] == pytest.approx(sum(st.values()), rel=0.05, abs=0.05)
        assert 0 < p["e2e_over_model_only"] <= 1.0
        # the bare model pass ran every prepared batch once per pass
        assert p["bare_model_img_per_s"] > 0
        e2e_ratio = p["img_per_s"] / p["bare_model_img_per_s"]
        # rounding of the two img/s figures to 3 decimals is the only difference
        assert p["e2e_over_bare_model"] == pytest.approx(e2e_ratio, rel=0.02)
    goals = [g for g in report["goals"] if g["goal"] == "e2e_vs_model"]
    by_name = {p["name"]: p for p in report["pipelines"]}
    # fp32 and int8, batch 1 and 2; judged on the overlapped run over the bare model (what
    # dn2 score runs), not the sequential one
    assert len(goals) == 4
    for g in goals:
        name = g["what"].rsplit("(", 1)[1].rstrip(")").removesuffix(", overlapped")
        assert g["what"].endswith(", overlapped)")
        assert g["measured"] == round(by_name[name]["overlapped_over_bare_model"], 3)


def test_dn2_rows_also_run_the_overlapped_runtime_pipeline(report):
    for p in report["pipelines"]:
        if p["kind"] == "torch":  # the reference has no runtime pipeline
            assert p["overlapped_img_per_s"] is None
            continue
        assert p["overlapped_img_per_s"] > 0
        ratio = p["overlapped_img_per_s"] / p["bare_model_img_per_s"]
        # rounding of the two img/s figures to 3 decimals is the only difference
        assert p["overlapped_over_bare_model"] == pytest.approx(ratio, rel=0.02)
    from dn2.tools.bench.report import format_tables

    assert "overlapped (decode pool, model and kNN" in format_tables(report)


def test_flops_match_torch_conv_shapes(report):
    """The ONNX-graph count equals MACs summed over torch Conv2d/Linear forward shapes (and the
    preprocessing's channel Gemm)."""
    import torch

    from dn2.tools.bench.models import torch_trunk

    trunk, _ = torch_trunk("resnet18", "none")
    macs = []

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            macs.append(out.numel() * mod.weight[0].numel())
        elif isinstance(mod, torch.nn.Linear):
            macs.append(out.numel() * mod.in_features)

    hs = [
        m.register_forward_hook(hook)
        for m in trunk.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.inference_mode():
        trunk(torch.zeros(1, 3, 64, 64))
    for h in hs:
        h.remove()
    # plus the graph's preprocessing: BGR -> RGB and normalisation as a Gemm [S*S, 3] @ [3, 3]
    macs.append(64 * 64 * 3 * 3)
    assert report["model_flops"]["macs"] == sum(macs)
    assert report["model_flops"]["gflops"] == pytest.approx(2 * sum(macs) / 1e9, abs=1e-4)


def test_pipelines_compute_the_same_embeddings(report):
    agree = report["agreement"]
    # same weights and same geometry: only the resampling filters (PIL vs OpenCV) and float
    # summation order differ, so random-weight embeddings stay close but not bit-equal
    assert agree["torch_vs_fp32"]["min"] > 0.99
    # int8 keeps cosine >= 0.99 on real photos (the export gate); allow margin at 64 px, random weights
    assert agree["fp32_vs_int8"]["min"] > 0.95
    # the gate's rank measure on all 7 bench frames; the goal row reads it
    rank = agree["fp32_vs_int8_rank"]
    (row,) = [g for g in report["goals"] if g["goal"] == "int8_rank"]
    assert rank["n"] == 7 and -1 <= rank["rho"] <= 1 and row["measured"] == round(rank["rho"], 3)


def test_goals_table_reads_the_streams_report_and_the_accuracy(report, tmp_path):
    streams = tmp_path / "streams.json"
    streams.write_text(
        json.dumps(
            {
                "streams": 4,
                "batch": 8,
                "ratio": 0.87,
                "live": {"cam0": {"latency_p95_ms": 120.5}, "cam1": {"latency_p95_ms": 99.0}},
            }
        )
    )
    acc = {
        "error": None,
        "delta_pts": {"fmnist": -0.1, "textile_global": 0.05, "textile_local": -0.6},
        "rank": {"textile": 0.97, "fmnist": 0.94},
    }
    goals = evaluate_goals(report["pipelines"], report["agreement"], acc, read_streams(streams))
    by = {}
    for g in goals:
        by.setdefault(g["goal"], []).append(g)
    (st,) = by["streams"]
    assert (st["measured"], st["met"]) == (0.87, False)  # 0.87 < 0.9
    assert "cam0" in st["note"] and "120.5" in st["note"]
    # |delta| <= 0.3 points: met for -0.1 and +0.05, not for -0.6
    assert [(g["measured"], g["met"]) for g in by["int8_auroc"]] == [
        (0.1, True),
        (0.05, True),
        (0.6, False),
    ]
    assert (0.97, True) in [(g["measured"], g["met"]) for g in by["int8_rank"]]
    assert (0.94, False) in [(g["measured"], g["met"]) for g in by["int8_rank"]]
    text = format_tables(dict(report, goals=goals))
    assert (
        "| 4 streams: aggregate frames/s / one stream, same batch (4 streams, batch 8) | >= 0.9 | 0.870 | NO"
        in text
    )
    assert "| int8 - fp32 ROC-AUC, absolute points" in text and "load avg" in text
    # a broken report says what was expected instead of failing the bench
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    got = read_streams(str(bad))
    assert "expected a bench.watch --streams JSON" in got["error"]
    (row,) = [
        g for g in evaluate_goals(report["pipelines"], {}, None, got) if g["goal"] == "streams"
    ]
    assert row["met"] is None and "expected" in row["note"]


def test_cli_writes_json_and_reuses_models(work, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = cli.main(
        [
            "--arch",
            "resnet18",
            "--weights",
            "none",
            "--input-size",
            "64",
            "--threads",
            "1",
            "--n-images",
            "2",
            "--passes",
            "1",
            "--batch",
            "1",
            "--frame-size",
            "320x240",
            "--bank-size",
            "40",
            "--quick",
            "--work-dir",
            str(work),
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "reusing" in captured.err  # the fixture's exports were reused, not redone
    assert "| torch-eager b1 |" in captured.out and "| dn2-int8 b1 |" in captured.out
    data = json.loads(out.read_text())
    assert [p["name"] for p in data["pipelines"]] == [
        "torch-eager b1",
        "dn2-fp32 b1",
        "dn2-int8 b1",
    ]
    assert all(p["img_per_s"] > 0 for p in data["pipelines"])


def test_cli_jpeg_draft_rows_share_the_model_and_agree(work, tmp_path, capsys):
    out = tmp_path / "draft.json"
    # 320x240 frames, input 64 (resize to 73): the draft decode keeps 160x120 (>= 1.25 x 73)
    rc = cli.main(
        [
            "--arch",
            "resnet18",
            "--weights",
            "none",
            "--input-size",
            "64",
            "--threads",
            "1",
            "--n-images",
            "5",
            "--passes",
            "1",
            "--batch",
            "1",
            "--frame-size",
            "320x240",
            "--bank-size",
            "40",
            "--quick",
            "--jpeg-draft",
            "--work-dir",
            str(work),
            "--json",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert [p["name"] for p in data["pipelines"]] == [
        "torch-eager b1",
        "dn2-fp32 b1",
        "dn2-int8 b1",
        "dn2-fp32-jpeg-draft b1",
        "dn2-int8-jpeg-draft b1",
    ]
    assert data["config"]["jpeg_draft_rows"] is True
    agree = data["agreement"]
    # the same model on a 2x DCT-domain decode: close (real photos, Lite0: >= 0.997) but not
    # identical, or the draft rows would not be decoding anything differently
    for prec in ("fp32", "int8"):
        cos = agree[f"{prec}_vs_{prec}_jpeg_draft"]
        assert 0.95 < cos["min"] and cos["mean"] < 0.999999, agree
    peak_rows = [g["what"] for g in data["goals"] if g["goal"] == "fp32_model_peak"]
    assert peak_rows == ["dn2 fp32 model stage / measured sgemm peak (dn2-fp32 b1)"]


def test_cli_cpu_split_rows_time_the_other_split_setting(work, tmp_path, capsys):
    out = tmp_path / "split.json"
    argv = ["--arch", "resnet18", "--weights", "none", "--input-size", "64", "--threads", "2"]
    argv += ["--n-images", "6", "--passes", "1", "--batch", "2", "--frame-size", "320x240"]
    argv += ["--bank-size", "40", "--quick", "--cpu-split-rows", "--work-dir", str(work)]
    assert cli.main(argv + ["--json", str(out)]) == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    # 2 threads, batches of 2: the runtime splits them, so the comparison rows are one session
    assert [p["name"] for p in data["pipelines"]] == [
        "torch-eager b2",
        "dn2-fp32 b2",
        "dn2-int8 b2",
        "dn2-fp32-1session b2",
        "dn2-int8-1session b2",
    ]
    assert data["config"]["cpu_split_rows"] is True
    assert all(p["img_per_s"] > 0 for p in data["pipelines"])
    speed_goals = [g["what"] for g in data["goals"] if g["goal"] == "int8_vs_torch"]
    assert speed_goals == [
        "dn2 int8 end-to-end / torch-eager (dn2-int8 b2, overlapped)",
        "dn2 int8 end-to-end / torch-eager (dn2-int8-1session b2, overlapped)",
    ]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--frame-size", "720p"], "WIDTHxHEIGHT"),
        (["--threads", "0"], ">= 1"),
        (["--bank-size", "1"], "at least 2"),
    ],
)
def test_cli_bad_arguments_fail_with_a_message(argv, needle, capsys, tmp_path):
    rc = cli.main(
        ["--arch", "resnet18", "--input-size", "64", "--n-images", "1", "--work-dir", str(tmp_path)]
        + argv
    )
    err = capsys.readouterr().err
    assert rc != 0
    assert needle in err and "Traceback" not in err


def test_make_batches_wraps_to_full_batches():
    assert make_batches(["a", "b", "c"], 2) == [["a", "b"], ["c", "a"]]
    assert make_batches(["a"], 3) == [["a", "a", "a"]]
    with pytest.raises(ValueError):
        make_batches([], 1)


def test_sgemm_peak_is_measured():
    from dn2.tools.bench.sgemm import measure_sgemm_peak

    res = measure_sgemm_peak(1, sizes=(64, 128), repeats=2)
    assert set(res["per_size"]) == {"64", "128"} and res["gflops"] == max(res["per_size"].values())
    assert np.isfinite(res["gflops"]) and res["gflops"] > 0


def test_ratios_are_medians_of_per_pass_ratios(work):
    rep = run_bench(
        "resnet18", "none", work_dir=str(work), log=lambda m: None, **dict(TINY, passes=3)
    )
    rows = {p["name"]: p for p in rep["pipelines"]}
    for p in rep["pipelines"]:
        pp = p["per_pass"]
        assert len(pp["img_per_s"]) == len(pp["bare_model_img_per_s"]) == 3
        # each pass ran every batch once: the per-pass rates recombine to the pooled rate
        # (harmonic mean, as every pass timed the same images); rounding is the only slack
        assert p["img_per_s"] == pytest.approx(3 / sum(1 / v for v in pp["img_per_s"]), rel=0.01)
        torch = rows[f"torch-eager b{p['batch']}"]["per_pass"]["img_per_s"]
        mine = [a / b for a, b in zip(pp["img_per_s"], torch)]
        assert p["x_torch_eager_per_pass"] == pytest.approx(mine, rel=1e-3)
        assert p["x_torch_eager"] == pytest.approx(sorted(mine)[1], rel=1e-3)  # the median
        if p["kind"] != "torch":
            ovl = [a / b for a, b in zip(pp["overlapped_img_per_s"], pp["bare_model_img_per_s"])]
            assert p["overlapped_over_bare_model_median"] == pytest.approx(sorted(ovl)[1], rel=1e-3)
            # the speed goals read dn2's own end to end: the overlapped pass over torch's pass
            x_ovl = [a / b for a, b in zip(pp["overlapped_img_per_s"], torch)]
            assert p["x_torch_eager_overlapped_per_pass"] == pytest.approx(x_ovl, rel=1e-3)
            assert p["x_torch_eager_overlapped"] == pytest.approx(sorted(x_ovl)[1], rel=1e-3)
    for g in rep["goals"]:
        if g["goal"] in ("int8_vs_torch", "fp32_vs_torch", "e2e_vs_model"):
            # the goal is judged on the median and says which per-pass values it came from
            assert g["note"].startswith("median of 3 passes: "), g
            assert g["what"].endswith(", overlapped)"), g
            values = [float(v) for v in g["note"].split(": ", 1)[1].split(";")[0].split(", ")]
            assert g["measured"] == pytest.approx(sorted(values)[1], abs=1e-3)
        if g["goal"] in ("int8_vs_torch", "fp32_vs_torch"):
            row = rows[g["what"].split("(")[1].split(",")[0]]
            assert g["measured"] == pytest.approx(row["x_torch_eager_overlapped"], abs=1e-3)
            assert f"sequential stages: {row['x_torch_eager']:.3f}" in g["note"]
    assert "per pass (in order" in format_tables(rep)


def _row(kind, seq, ovl):
    """A pipeline row as build_report makes it: per-pass x torch-eager, sequential and
    overlapped (no timing)."""
    med = sorted(seq)[len(seq) // 2] if seq else None
    omed = sorted(ovl)[len(ovl) // 2] if ovl else None
    return {
        "kind": kind,
        "name": f"dn2-{kind} b1",
        "per_pass": {},
        "x_torch_eager_per_pass": seq,
        "x_torch_eager": med,
        "x_torch_eager_overlapped_per_pass": ovl,
        "x_torch_eager_overlapped": omed,
    }


def test_x_torch_goals_read_the_overlapped_pipeline_and_fall_back_to_the_sequential_one():
    goals = evaluate_goals(
        [
            _row("int8", [2.5, 2.6, 2.4], [2.9, 3.1, 2.8]),  # both ran: the overlapped decides
            _row("fp32", [1.6], []),  # no overlapped pass: the sequential ratio, said so
        ]
    )
    by = {g["goal"]: g for g in goals if g["goal"] in ("int8_vs_torch", "fp32_vs_torch")}
    i8, f32 = by["int8_vs_torch"], by["fp32_vs_torch"]
    assert i8["measured"] == 2.9 and i8["met"] and i8["what"].endswith("(dn2-int8 b1, overlapped)")
    assert i8["note"] == "median of 3 passes: 2.900, 3.100, 2.800; sequential stages: 2.500"
    assert f32["measured"] == 1.6 and f32["met"] and f32["what"].endswith("(dn2-fp32 b1)")
    assert "overlapped" not in f32["what"] and "note" not in f32  # one pass: nothing to list
    # a row with no torch-eager reference (no ratio at all): not measured, never a crash
    none = evaluate_goals([_row("int8", [], [])])
    assert [g["met"] for g in none if g["goal"] == "int8_vs_torch"] == [None]
