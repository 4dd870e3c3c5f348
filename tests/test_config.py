"""Typed configuration: defaults and validation in one place, strict types, the field named."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from dn2.runtime.config import FitConfig, ScoreConfig, WatchConfig
from dn2.runtime.errors import ConfigError, Dn2Error


@pytest.mark.parametrize(
    "kw,param,says",
    [
        ({"k": True}, "k", r"k: expected an integer >= 1, found True"),  # a bool is not a number
        ({"k": 2.0}, "k", r"k: expected an integer >= 1, found 2.0"),
        ({"k": 0}, "k", r"k: expected >= 1, found 0"),
        ({"fpr": 1}, "fpr", r"fpr: expected a rate in \(0, 1\), found 1"),
        ({"fpr": float("nan")}, "fpr", r"found nan"),
        ({"fpr": "0.01"}, "fpr", r"found '0.01'"),
        ({"clean": 1.0}, "clean", r"clean: expected a fraction in \[0, 1\), found 1.0"),
        ({"l2norm": 1}, "l2norm", r"l2norm: expected one of True, False, 'auto', found 1"),
        ({"index": "faiss"}, "index", r"index: expected one of 'auto', 'exact', 'hnsw'"),
        ({"jpeg_draft": "yes"}, "jpeg_draft", r"jpeg_draft: expected true or false"),
        ({"providers": ""}, "providers", r"providers: expected 'auto'"),
        ({"hnsw": {"M": 0}}, "hnsw", r"hnsw: expected None or a mapping"),
        ({"kmeans": 1, "k": 2}, "kmeans", r"kmeans 1: expected at least k=2 centres"),
    ],
)
def test_bad_values_name_the_field(kw, param, says):
    with pytest.raises(ConfigError, match=says) as err:
        FitConfig(**kw)
    assert err.value.param == param and isinstance(err.value, Dn2Error)
    assert "--" not in str(err.value)  # the caller's words, not a command line's


def test_from_mapping_replace_and_round_trip():
    cfg = FitConfig.from_mapping({"k": 3, "index": "hnsw", "fpr": 0.05})
    assert (cfg.k, cfg.index, cfg.fpr) == (3, "hnsw", 0.05)
    assert FitConfig.from_mapping(cfg.to_dict()) == cfg
    assert cfg.replace(k=4).k == 4 and cfg.k == 3  # frozen: a new object
    with pytest.raises(
        ConfigError,
        match=r"unknown option 'kk' for FitConfig; expected one of "
        r"k, clean",
    ) as err:
        FitConfig.from_mapping({"kk": 1})
    assert err.value.param == "kk"
    with pytest.raises(ConfigError, match=r"fpr: expected") as err:
        cfg.replace(fpr=2)
    assert err.value.param == "fpr"
    assert FitConfig(k=np.int64(3), fpr=np.float32(0.25)).k == 3  # numpy numbers are numbers
    assert isinstance(FitConfig(clean=0).clean, float)  # an int where a float is asked for


def test_watch_and_score_configs():
    with pytest.raises(ConfigError, match=r"hop: expected only together with group") as err:
        WatchConfig(hop=2)
    assert err.value.param == "hop"
    assert WatchConfig(group=4, hop=2).hop == 2
    with pytest.raises(ConfigError, match=r"group: expected >= 2, found 1"):
        WatchConfig(group=1)
    assert ScoreConfig().to_dict() == {
        "k": 2,
        "l2norm": True,
        "jpeg_draft": False,
        "reduction": "mean",
        "color": "color",
        "mode": "global",
        "combine": "max",
    }
    assert FitConfig(k=5, l2norm="auto").score_config(l2norm=False) == ScoreConfig(
        k=5, l2norm=False
    )


def test_library_and_cli_defaults_agree():
    from dn2.runtime.fit_cli import build_parser as fit_parser
    from dn2.runtime.watch.cli import build_parser as watch_parser
    from dn2.runtime.watch.loop import watch

    fit_args = fit_parser().parse_args(["m.onnx", "x", "--output", "b"])
    from dn2.runtime.cliargs import library_kwargs

    got = FitConfig(**library_kwargs(FitConfig, fit_args, {"n_groups": "groups"}))
    assert got == FitConfig(), "every dn2-fit default is the FitConfig default"
    wa = watch_parser().parse_args(["b", "--source", "0"])
    sig = inspect.signature(watch).parameters
    for name in WatchConfig.field_names():
        default = getattr(WatchConfig(), name)
        if hasattr(wa, name):
            assert getattr(wa, name) == default, name
        if name in sig:
            assert sig[name].default == default, name


def test_fit_bundle_takes_a_config_or_the_old_keywords(tmp_path):
    from dn2.runtime.bundle import load_bundle
    from dn2.runtime.fit import fit_bundle

    from textures import write_images
    from tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "m.onnx")
    imgs = write_images(tmp_path / "n", 10, "normal", seed=1)
    a = fit_bundle(
        model,
        tmp_path / "a",
        images=imgs,
        config=FitConfig(k=3, fpr=0.1),
        progress=False,
        threads=1,
    )
    b = fit_bundle(model, tmp_path / "b", images=imgs, k=3, fpr=0.1, progress=False, threads=1)
    ma, mb = load_bundle(a).manifest, load_bundle(b).manifest
    assert ma.threshold.value == mb.threshold.value
    assert ma.score.k == 3 and ma.fit_config.fpr == 0.1
    assert ma.fit_config == FitConfig(k=3, fpr=0.1, threads=1)
    assert FitConfig.from_mapping(ma.fit_config.to_dict()) == ma.fit_config
    with pytest.raises(ConfigError, match=r"unknown option 'kay'") as err:
        fit_bundle(model, tmp_path / "c", images=imgs, kay=3)
    assert err.value.param == "kay" and not (tmp_path / "c").exists()
    with pytest.raises(ConfigError) as err:
        fit_bundle(model, tmp_path / "c", images=imgs, fpr=True)
    assert err.value.param == "fpr"


def test_a_fit_option_is_a_field_a_flag_and_its_use(tmp_path, capsys):
    """near_copy_ratio: FitConfig field, dn2 fit flag, used where duplicates are found; the
    bundle records it in fit.config. Re-saved JPEG copies (other bytes, near embeddings) are
    grouped at the default and not at 0, where each copy vouches for its twin."""
    import cv2

    from dn2.runtime import fit_cli
    from dn2.runtime.bundle import load_bundle

    from textures import write_images
    from tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "m.onnx")
    folder = tmp_path / "n"
    imgs = write_images(folder, 40, "normal", seed=3)
    for p in imgs[:20]:  # a camera's second capture of the same pieces: q85 JPEG re-saves
        cv2.imwrite(str(folder / f"{p.stem}_again.jpg"), cv2.imread(str(p)),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])  # fmt: skip
    base = [str(model), str(folder), "-q", "--threads", "1"]
    assert fit_cli.main(base + ["-o", str(tmp_path / "a")]) == 0
    assert fit_cli.main(base + ["-o", str(tmp_path / "b"), "--near-copy-ratio", "0"]) == 0
    a, b = load_bundle(tmp_path / "a").manifest, load_bundle(tmp_path / "b").manifest
    assert a.fit_config.near_copy_ratio == 0.05 and b.fit_config.near_copy_ratio == 0.0
    assert a.fit.duplicates["near_copies"] >= 30 and b.fit.duplicates["near_copies"] == 0
    assert b.threshold.value < a.threshold.value  # twins vouching: a lower threshold
    assert fit_cli.main(base + ["-o", str(tmp_path / "c"), "--near-copy-ratio", "2"]) == 2
    assert "--near-copy-ratio: expected a number in [0, 1], found 2.0" in capsys.readouterr().err
