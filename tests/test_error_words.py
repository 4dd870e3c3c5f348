"""Errors in the caller's words: a library error names the parameter (and carries it in
``exc.param`` / ``exc.params``); the command line says the flag the user typed instead."""

from __future__ import annotations

import numpy as np
import pytest

from dn2.runtime import fit_cli
from dn2.runtime.bundle import check_output
from dn2.runtime.errors import Dn2Error
from dn2.runtime.fit import fit_bundle
from dn2.runtime.fit_video import check_stream_args
from dn2.runtime.views import View
from dn2.runtime.watch.decide import Decider
from dn2.runtime.watch.learn import parse_learn

from tiny_model import make_tiny_model


def _raised(fn, *args, **kw) -> Dn2Error:
    with pytest.raises(Dn2Error) as err:
        fn(*args, **kw)
    return err.value


@pytest.mark.parametrize(
    "call, params, words",
    [
        (lambda tmp: check_output(tmp / "afile"), ("output",), "output "),
        (lambda tmp: View.parse("tiles=2"), ("view",), "view: expected crop"),
        (lambda tmp: View.parse("tiles=0x2"), ("view",), "view tiles: expected 1.."),
        (lambda tmp: Decider(1.0, min_consecutive=0), ("min_consecutive",), "min_consecutive"),
        (lambda tmp: parse_learn("ten"), ("learn",), "learn expects seconds"),
        (
            lambda tmp: check_stream_args(["0"], 1, None, None),
            ("max_frames", "seconds"),
            "expected max_frames N or seconds S",
        ),
    ],
)
def test_library_errors_name_parameters_not_flags(tmp_path, call, params, words):
    (tmp_path / "afile").write_text("not a bundle folder")
    err = _raised(call, tmp_path)
    assert err.params == params and err.param == params[0]
    assert words in str(err) and "--" not in str(err), str(err)


def test_the_cli_says_the_flag_for_the_same_error(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "m.onnx", dim=8)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (tmp_path / "afile").write_text("x")
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    err = _raised(fit_bundle, model, tmp_path / "afile", embeddings=x, progress=False)
    assert str(err).startswith("output ") and err.param == "output"  # the Python caller's word
    rc = fit_cli.main([str(model), str(imgs), "--output", str(tmp_path / "afile"), "-q"])
    out = capsys.readouterr().err
    assert rc == 2 and "--output " in out and "expected a bundle directory to create" in out
    rc = fit_cli.main([str(model), "0", "--output", str(tmp_path / "b"), "-q"])  # a camera
    assert rc == 2 and "expected --max-frames N or --seconds S" in capsys.readouterr().err


def test_a_sink_error_says_the_flag_and_leaves_urls_alone(tmp_path, capsys):
    pytest.importorskip("paho.mqtt.client", reason="pip install 'dn2[serve]'")
    from dn2.runtime.watch import cli as watch_cli
    from dn2.runtime.watch.sinks.mqtt import MqttTarget

    err = _raised(MqttTarget, "http://127.0.0.1:1/x", "cam", {})
    assert str(err).startswith("mqtt http://127.0.0.1:1/x: expected mqtt://host") and (
        err.param == "mqtt"
    )
    rc = watch_cli.main([str(tmp_path), "--source", "0", "--mqtt", "http://127.0.0.1:1/x"])
    out = capsys.readouterr().err
    assert rc == 2 and "--mqtt http://127.0.0.1:1/x: expected mqtt://host" in out, out
    assert "--mqtt://" not in out  # the scheme in a URL is not the parameter


def test_watch_group_errors_name_the_field_and_the_cli_the_flag(tmp_path, capsys):
    from dn2.runtime.cliargs import error_text
    from dn2.runtime.detector import Detector
    from dn2.runtime.watch.cli import build_parser
    from dn2.runtime.watch.loop import _threshold

    model = make_tiny_model(tmp_path / "m.onnx", dim=8)
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    fit_bundle(model, tmp_path / "b", embeddings=x, progress=False)
    det = Detector.load(tmp_path / "b", load_model=False)  # a real bundle without groups
    err = _raised(_threshold, det, None, 5)
    assert err.param == "group" and str(err).startswith("group: expected a bundle fitted")
    assert "--group " not in str(err)  # the Python caller set WatchConfig(group=5)
    said = error_text(err, build_parser())
    assert said.startswith("--group: expected") and "dn2 fit --group-size M" in said
