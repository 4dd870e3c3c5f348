"""dn2-export's command line: fast failures, messages instead of tracebacks, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dn2.export.archs import ARCH_NAMES
from dn2.export.cli import main

PROBE = """
import sys
from dn2.export.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print("rc", rc, "torch" in sys.modules)
"""


def _probe(*args):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120
    )
    return proc, time.perf_counter() - t0


def test_unknown_arch_fails_at_once_naming_the_choices_without_loading_torch():
    proc, seconds = _probe("--arch", "vgg16", "--output", "x.onnx")
    assert proc.stdout.split() == ["rc", "2", "False"]  # argparse usage error; torch not imported
    assert "invalid choice: 'vgg16'" in proc.stderr
    assert all(a in proc.stderr for a in ARCH_NAMES)
    assert "Traceback" not in proc.stderr
    assert seconds < 20  # interpreter start + argparse; importing torch alone takes longer here


def test_unwritable_output_fails_without_loading_torch():
    proc, _ = _probe("--weights", "none", "--output", "/nonexistent-dn2/m.onnx")
    assert proc.stdout.split() == ["rc", "2", "False"]
    assert proc.stderr.strip() == (
        "dn2-export: error: cannot write /nonexistent-dn2/m.onnx: "
        "folder /nonexistent-dn2 does not exist"
    )


def test_tensorrt_without_tensorrt_fails_before_exporting(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; tests/test_gpu.py covers --tensorrt")
    assert main(["--weights", "none", "--tensorrt", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "--tensorrt needs the TensorRT Python API" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_arch_and_weights_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(a in out for a in ARCH_NAMES)
    for word in ("imagenet:IMAGENET1K_V2", "--precision", "--calib", "--tensorrt", "none", "PATH"):
        assert word in out


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--precision", "int4"], "invalid choice: 'int4'"),
        (["--input-size", "abc"], "invalid int value"),
    ],
)
def test_bad_argument_values_are_usage_errors(args, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--output", "/nonexistent-dn2/dir/m.onnx"], "folder /nonexistent-dn2/dir does not exist"),
        (["--input-size", "8"], "--input-size 8 out of range"),  # the library's input_size
        (["--opset", "7"], "opset 7 unsupported"),
    ],
)
def test_bad_values_fail_before_any_work_with_one_line(args, expected, tmp_path, capsys):
    t0 = time.perf_counter()
    rc = main(
        ["--arch", "resnet18", "--weights", "none", *args]
        + ([] if "--output" in args else ["--output", str(tmp_path / "m.onnx")])
    )
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert time.perf_counter() - t0 < 10  # no weights were built
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["--weights", "none", "--output", str(tmp_path / "afile" / "m.onnx")]) == 2
    assert "afile is a file, not a folder" in capsys.readouterr().err
    assert main(["--weights", "none", "--output", str(tmp_path)]) == 2
    assert "is a folder; expected a file name" in capsys.readouterr().err


def test_output_in_a_read_only_folder_is_refused(tmp_path, capsys):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        assert main(["--weights", "none", "--output", str(ro / "m.onnx")]) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_export_writes_model_and_report_under_the_default_name(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")
    monkeypatch.chdir(tmp_path)
    assert main(["--arch", "resnet18", "--weights", "none", "--input-size", "64"]) == 0
    out = tmp_path / "resnet18-64-fp32.onnx"  # <arch>-<S>-<precision>.onnx
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out.resolve())
    for stage in ("[weights]", "[export]", "[verify]"):
        assert stage in captured.err
    report = json.loads((tmp_path / "resnet18-64-fp32.onnx.json").read_text())
    assert report["arch"] == "resnet18" and report["embedding_dim"] == 512
    assert report["resize"] == {"mode": "shorter_side", "resize_to": 73, "crop": 64}
    assert report["verify"]["passed"] and report["verify"]["n"] == 20
    assert report["verify"]["tolerance"] == {
        "max_abs_rel": 1e-3,
        "min_cosine": 0.9999,
        "min_knn_spearman": 0.99,  # fp32 checks the kNN-score ranks too (gate.TOLERANCES)
    }
    assert report["verify"]["knn_spearman"] >= 0.99
    assert set(report["timings_s"]) == {"weights", "export", "verify", "total"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".json"]
