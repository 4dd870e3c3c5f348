"""dn2-watch command line: bad input gets a message and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest

from dn2.runtime.errors import Dn2Error
from dn2.runtime.watch.cli import build_parser, main
from dn2.runtime.watch.learn import parse_learn

from videos import load_frames, write_video


@pytest.fixture(scope="module")
def clip(textile_dirs, tmp_path_factory):
    return write_video(
        tmp_path_factory.mktemp("cli") / "clip.avi",
        load_frames(textile_dirs["nominal"], 5, size=64),
        fps=10,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["{tmp}/no_bundle", "--source", "{tmp}/missing.avi"], "found no such path"),
        (
            ["{tmp}/no_bundle", "--source", "{clip}", "--hop", "2"],
            "--hop: expected only together with --group",
        ),
        (
            ["{tmp}/no_bundle", "--source", "{clip}", "--batch", "0"],
            "--batch-size: expected >= 1, found 0",
        ),
        (["{tmp}/no_bundle", "--source", "{clip}", "--learn", "ten"], "--learn expects"),
        (["{tmp}/no.onnx", "--source", "{clip}", "--learn", "30f"], "model"),
        (
            ["{tmp}/no_bundle", "--source", "{clip}", "--realtime", "--group", "1"],
            "--group: expected >= 2, found 1",
        ),
        (["{tmp}/no_bundle", "--source", "7", "--realtime"], "replays a video file"),
    ],
)
def test_bad_input_is_a_message_and_exit_2(args, message, clip, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, clip=clip) for a in args]
    assert main(argv) == 2  # the exit-code table: nothing done
    err = capsys.readouterr().err
    assert err.startswith("dn2-watch: error: ") and message in err and "Traceback" not in err


def test_a_bad_bundle_is_exit_2_like_dn2_score(clip, tmp_path, capsys):
    assert main([str(tmp_path / "no_bundle"), "--source", str(clip)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dn2-watch: error: ") and "expected a bundle directory" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bundle"])  # --source is required
    assert e.value.code == 2 and "--source" in capsys.readouterr().err


def test_every_documented_option_exists():
    opts = {o for a in build_parser()._actions for o in a.option_strings}
    for o in (
        "--source",
        "--batch",
        "--stride",
        "--group",
        "--hop",
        "--threshold",
        "--min-consecutive",
        "--cooldown",
        "--events",
        "--snapshots",
        "--output-video",
        "--headless",
        "--stats-every",
        "--learn",
        "--providers",
        "--threads",
        "--max-frames",
    ):
        assert o in opts


def test_learn_spec_parsing():
    assert parse_learn("30") == ("seconds", 30.0)
    assert parse_learn("2.5s") == ("seconds", 2.5)
    assert parse_learn("300f") == ("frames", 300)
    assert parse_learn("120 frames") == ("frames", 120)
    for bad in ("0", "5f", "abc", "3.5f", "-2"):
        with pytest.raises(Dn2Error):
            parse_learn(bad)
