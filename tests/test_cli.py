"""The one ``dn2`` command: subcommands, aliases, --version, checks, --config, exit codes, -q/-v.

Runs the real dispatcher in-process and, where imports or the console scripts matter, in a
fresh interpreter; fits and scores a tiny real ONNX model (no mocks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dn2.cli.main import main as dn2
from dn2.cli.registry import COMMANDS
from dn2.runtime.cliargs import EXIT_CODES, EXIT_EPILOG
from dn2.runtime.version import __version__

from textures import write_images
from tiny_model import make_tiny_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_model(root / "tiny.onnx")
    write_images(root / "normal", 40, "normal", seed=1)
    anom = write_images(root / "anom", 3, "anomalous", seed=2)
    return {"root": root, "model": model, "normal": root / "normal", "anom": anom}


def _script(name: str) -> str:
    """The installed console script next to this interpreter (the editable install's)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            pytest.skip(f"console script {name} is not installed")
        return found
    return str(path)


def test_version_and_help_list_every_subcommand_and_the_exit_codes(capsys):
    assert dn2(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dn2 {__version__}"
    assert dn2(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n  {name} " in out, name
    for code, _ in EXIT_CODES:
        assert f"\n  {code:<4d}" in out
    assert dn2([]) == 2  # no subcommand: usage on stderr
    assert "usage: dn2" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error_with_a_suggestion(capsys):
    assert dn2(["fti", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'fti'" in err and "did you mean 'fit'" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_help_carries_the_one_exit_code_table(name, capsys):
    assert dn2([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dn2 {name}"), out[:80]
    assert EXIT_EPILOG.splitlines()[0] in out
    assert all(f"  {code:<4d}" in out for code, _ in EXIT_CODES)
    for opt in ("--quiet", "--verbose", "--config"):
        assert opt in out, (name, opt)


def test_registry_targets_resolve_and_aliases_point_at_them():
    import importlib

    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    assert scripts["dn2"] == "dn2.cli.main:main"
    for name, cmd in COMMANDS.items():
        module, func = cmd.target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), cmd.target
        if f"dn2-{name}" in scripts:  # every alias runs the registered function
            assert scripts[f"dn2-{name}"] == cmd.target, name


def test_fit_and_score_through_dn2_start_without_torch(world, tmp_path):
    """`dn2 fit` / `dn2 score` in a fresh interpreter whose import of torch would fail."""
    bundle = tmp_path / "b"
    code = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ImportError("no torch here")
        sys.meta_path.insert(0, NoTorch())
        from dn2.cli.main import main
        assert main(["fit", {str(world["model"])!r}, {str(world["normal"])!r}, "-o",
                     {str(bundle)!r}, "-q"]) == 0
        assert main(["score", {str(bundle)!r}, {str(world["anom"][0])!r}, "--json"]) == 0
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "dn2.export",
               "dn2.tools") or m.startswith(("dn2.export", "dn2.tools"))]
        print("LOADED", bad)
    """)
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "LOADED []" in p.stdout
    row = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][0])
    assert row["anomalous"] is True and row["error"] is None


def test_a_missing_extra_names_the_pip_install_that_fixes_it(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # as if dn2[export] were not installed
        from dn2.cli.main import main
        sys.exit(main(["bench", "--quick", "--work-dir", {str(tmp_path)!r}]))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "torch is not installed" in p.stderr and "pip install 'dn2[export,tools]'" in p.stderr
    assert "Traceback" not in p.stderr


def test_console_scripts_dn2_and_an_alias_agree(world, tmp_path):
    bundle = tmp_path / "b"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            _script("dn2"),
            "fit",
            str(world["model"]),
            str(world["normal"]),
            "--output",
            str(bundle),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    files = [str(a) for a in world["anom"]]
    a = subprocess.run(
        [_script("dn2"), "score", str(bundle), *files, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    b = subprocess.run(
        [_script("dn2-score"), str(bundle), *files, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 3
    v = subprocess.run([_script("dn2"), "--version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and v.stdout.strip() == f"dn2 {__version__}"


def test_messages_name_the_command_as_typed(world, tmp_path, capsys):
    from dn2.runtime import score_cli

    missing = str(tmp_path / "nope")
    assert dn2(["score", missing, str(world["anom"][0])]) == 2
    assert capsys.readouterr().err.startswith("dn2 score: error: ")
    assert score_cli.main([missing, str(world["anom"][0])]) == 2
    assert capsys.readouterr().err.startswith("dn2-score: error: ")


# ---------------------------------------------------------------------------- --config FILE


def _fit(world, out, *extra):
    return dn2(
        ["fit", str(world["model"]), str(world["normal"]), "--output", str(out), "-q", *extra]
    )


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "dn2.json").read_text())


def test_config_file_sets_options_and_the_command_line_overrides_it(world, tmp_path):
    cfg = tmp_path / "fit.toml"
    cfg.write_text('fpr = 0.05\nk = 3\nindex = "exact"\nl2norm = false\n')
    assert _fit(world, tmp_path / "a", "--config", str(cfg)) == 0
    m = _manifest(tmp_path / "a")
    assert m["threshold"]["fpr"] == 0.05 and m["score"]["k"] == 3
    assert m["bank"]["kind"] == "exact" and m["score"]["l2norm"] is False
    assert _fit(world, tmp_path / "b", "--config", str(cfg), "--fpr", "0.02", "--l2norm") == 0
    m = _manifest(tmp_path / "b")
    assert m["threshold"]["fpr"] == 0.02 and m["score"]["k"] == 3 and m["score"]["l2norm"]


def test_config_may_hold_the_positionals_and_library_names(world, tmp_path):
    pytest.importorskip("yaml")
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(
        f"model_path: {world['model']}\nimages: [{world['normal']}]\n"
        f"output: {tmp_path / 'y'}\nn_groups: 20\ngroup_size: 3\n"
    )
    assert dn2(["fit", "--config", str(cfg), "-q"]) == 0
    m = _manifest(tmp_path / "y")
    assert m["group"]["size"] == 3 and m["fit"]["images"] == 40


@pytest.mark.parametrize(
    "text,suffix,message",
    [
        ("fpr = 0.05\nthreshhold = 2\n", ".toml", "unknown key 'threshhold'"),
        ('index = "flat"\n', ".toml", "index must be one of auto, exact, hnsw, found 'flat'"),
        ("k = [2, 3]\n", ".toml", "k expects one value"),
        ("l2norm = 1\n", ".toml", "l2norm expects true or false"),
        ("k = \n", ".toml", "not valid TOML"),
        ("k: 2\n", ".json", "expected a .toml, .yaml or .yml file"),
    ],
)
def test_bad_config_is_a_usage_error_naming_the_key(world, tmp_path, capsys, text, suffix, message):
    cfg = tmp_path / f"fit{suffix}"
    cfg.write_text(text)
    assert _fit(world, tmp_path / "never", "--config", str(cfg)) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err and "Traceback" not in err, err
    assert not (tmp_path / "never").exists()


def test_config_of_another_command_works_the_same(world, tmp_path, capsys):
    bundle = tmp_path / "b"
    assert _fit(world, bundle) == 0
    capsys.readouterr()  # fit prints the bundle path
    cfg = tmp_path / "score.toml"
    cfg.write_text("json = true\n")
    assert dn2(["score", str(bundle), str(world["anom"][0]), "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["anomalous"] is True


# ---------------------------------------------------------------------------- logging


def test_quiet_and_verbose_steer_the_dn2_logger(world, tmp_path, capsys):
    assert dn2(["fit", str(world["model"]), str(world["normal"]), "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "embedded 40 images" in err and "bundle written" in err
    assert (
        dn2(["-q", "fit", str(world["model"]), str(world["normal"]), "-o", str(tmp_path / "b")])
        == 0
    )
    err = capsys.readouterr().err
    assert "embedded" not in err and "bundle written" not in err
    assert (
        dn2(["fit", str(world["model"]), str(world["normal"]), "-o", str(tmp_path / "c"), "-v"])
        == 0
    )
    assert "dn2.runtime.fit: bundle written" in capsys.readouterr().err


def test_a_library_call_is_silent_unless_the_caller_configures_logging(world, tmp_path):
    code = textwrap.dedent(f"""
        from dn2.runtime.fit import fit_bundle
        fit_bundle({str(world["model"])!r}, {str(tmp_path / "b")!r},
                   images=[{str(world["normal"])!r}])
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "bundle written" not in p.stderr and "threshold (" not in p.stderr


# ---------------------------------------------------------------------------- checks


def test_checks_reports_runtime_pieces_as_text_and_json(capsys):
    assert dn2(["checks"]) == 0
    text = capsys.readouterr().out
    for key in (
        "dn2",
        "python",
        "numpy",
        "onnxruntime",
        "providers",
        "opencv",
        "video back-ends",
        "hnswlib",
        "cpu",
        "features",
    ):
        assert f"\n{key}" in "\n" + text or f"\n  {key}" in text, key
    assert dn2(["checks", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    import cv2
    import onnxruntime

    assert rep["dn2"]["version"] == __version__ and rep["problems"] == []
    assert rep["onnxruntime"]["version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in rep["onnxruntime"]["providers"]
    assert rep["opencv"]["version"] == cv2.__version__
    assert "FFMPEG" in rep["opencv"]["file_backends"]  # opencv-python wheels bundle FFmpeg
    assert rep["cpu"]["cores"] >= 1 and isinstance(rep["cpu"]["features"], list)
    assert rep["extras"]["export"]["torch"]  # the test install has dn2[export]


def test_checks_never_imports_torch():
    code = (
        "import sys\nfrom dn2.cli.main import main\nassert main(['checks', '--json']) == 0\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "TORCH False" in p.stdout


# ---------------------------------------------------------------------------- caller's words


def _param_error(msg: str, param: str):
    from dn2.runtime.errors import Dn2Error

    exc = Dn2Error(msg)
    exc.param = param  # what a library error about one parameter carries
    return exc


@pytest.mark.parametrize(
    "param,msg,told",
    [
        ("fpr", "fpr expected in (0, 1), found 2.0", "--fpr expected in (0, 1), found 2.0"),
        ("n_groups", "n_groups=0: expected >= 2", "--groups 0: expected >= 2"),
        ("val_normal", "threshold_method 'youden' needs val_normal", "needs --val-normal"),
        ("images", "images: expected at least 5 good normal images", "NORMAL: expected"),
    ],
)
def test_library_parameter_names_become_the_flags_on_the_command_line(param, msg, told):
    from dn2.runtime import fit_cli
    from dn2.runtime.cliargs import error_text

    parser = fit_cli.build_parser()
    text = error_text(_param_error(msg, param), parser, fit_cli.PARAMS)
    assert told in text, text
    assert error_text(_param_error(msg, param)) == msg  # a Python caller keeps the names
    assert "fpr_x" in error_text(_param_error("fpr_x is fine", "fpr"), parser)  # whole words


def test_dash_is_stdout_for_watch_events(world, tmp_path):
    """`dn2 watch --events -`: the alert events as JSON lines on stdout, from a real MJPG clip
    with a run of defective frames in the middle."""
    import numpy as np

    from textures import texture
    from videos import write_video

    bundle = tmp_path / "b"
    assert _fit(world, bundle) == 0
    rng = np.random.default_rng(5)
    kinds = ["normal"] * 12 + ["anomalous"] * 8 + ["normal"] * 12
    clip = write_video(tmp_path / "clip.avi", [texture(rng, k, size=64) for k in kinds], fps=10)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "dn2.cli",
            "watch",
            str(bundle),
            "--source",
            str(clip),
            "--headless",
            "--events",
            "-",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    events = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith('{"type"')]
    assert [e["type"] for e in events] == ["alert_start", "alert_end"], p.stdout[-2000:]
    assert 10 <= events[0]["frame"] <= 16  # opens inside the defective run (3 consecutive)


def test_eval_json_goes_to_stdout_and_json_out_to_a_file(world, tmp_path, capsys):
    """`--json` is the machine-readable result on stdout (the table moves to stderr);
    `--json-out FILE` writes it to a file. A labelled folder tree of real PNG files."""
    pytest.importorskip("sklearn")
    data = tmp_path / "data"
    for split, n in (("train", 12), ("test", 6)):
        write_images(data / split / "smooth", n, "normal", seed=3 if split == "train" else 4)
        write_images(data / split / "blotchy", n, "anomalous", seed=5 if split == "train" else 6)
    base = [
        "eval",
        "--dataset",
        str(data),
        "--model",
        str(world["model"]),
        "--protocol",
        "one-class",
        "--cache-dir",
        str(tmp_path / "cache"),
        "-q",
    ]
    assert dn2(base + ["--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["n_test"] == 12 and doc["mean_auroc"] > 0.9  # blotches vs gradients: separable
    assert "|" in err  # the markdown table, on stderr
    assert dn2(base + ["--json-out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["mean_auroc"] == doc["mean_auroc"]
    assert "|" in capsys.readouterr().out


def test_options_reach_the_library_by_name_with_nothing_in_between():
    """A fit option whose dest is the parameter's (or config field's) name needs no CLI code:
    library_kwargs builds the call, from a function signature or a dataclass."""
    import dataclasses

    from dn2.runtime import fit_cli
    from dn2.runtime.cliargs import library_kwargs
    from dn2.runtime.fit import fit_bundle

    parser = fit_cli.build_parser()
    a = parser.parse_args(
        ["m.onnx", "n/", "-o", "b", "--fpr", "0.02", "--groups", "7", "--jpeg-draft"]
    )
    kw = library_kwargs(fit_bundle, a, fit_cli.PARAMS, progress=False)
    assert kw["model_path"] == "m.onnx" and kw["images"] == ["n/"] and kw["output"] == "b"
    assert kw["fpr"] == 0.02 and kw["n_groups"] == 7 and kw["jpeg_draft"] is True
    assert kw["progress"] is False and "quiet" not in kw and "embeddings" not in kw

    @dataclasses.dataclass(frozen=True)
    class FitLike:
        fpr: float = 0.01
        n_groups: int = 1000
        new_option: int = 3

    parser.add_argument("--new-option", type=int, default=3)  # the one line a new option adds
    a = parser.parse_args(["m.onnx", "n/", "-o", "b", "--new-option", "9"])
    assert FitLike(**library_kwargs(FitLike, a, fit_cli.PARAMS)) == FitLike(0.01, 1000, 9)
