"""--weights imagenet|none|PATH: offline behaviour, state-dict files, key mismatches."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting needs pip install 'dn2[export]'")

from dn2.export.archs import get_arch  # noqa: E402
from dn2.export.cli import main  # noqa: E402
from dn2.export.weights import WeightsError, load_weights  # noqa: E402
from dn2.runtime.modelmeta import read_model_meta  # noqa: E402


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no network attempts (tests never download)."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("DN2_OFFLINE", "1")
    return home


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_offline_imagenet_resnet_fails_with_directions_and_writes_nothing(
    empty_hub, tmp_path, capsys
):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = main(["--arch", "resnet101", "--output", str(out_dir / "r101.onnx")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "resnet101-63fe2227.pth" in err  # IMAGENET1K_V1, the paper's original weights
    assert str(empty_hub / "hub" / "checkpoints") in err
    assert "--weights PATH" in err and "--arch efficientnet_lite0" in err
    assert "Traceback" not in err
    assert _files(out_dir) == []


def test_newer_imagenet_set_is_selectable_and_unknown_sets_are_named(empty_hub):
    with pytest.raises(WeightsError, match="resnet50-11ad3fa6.pth"):  # IMAGENET1K_V2
        load_weights(get_arch("resnet50"), "imagenet:IMAGENET1K_V2")
    with pytest.raises(WeightsError, match="valid: imagenet:IMAGENET1K_V1$"):
        load_weights(get_arch("resnet18"), "imagenet:IMAGENET1K_V2")  # resnet18 has only V1


def test_hub_cache_is_where_weights_are_looked_up(empty_hub):
    ckpt = empty_hub / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    # a file under the torchvision name whose content does not match the hash in that name
    torch.save({"x": torch.zeros(1)}, ckpt / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(get_arch("resnet18"), "imagenet")


def test_state_dict_file_is_used_and_recorded(tmp_path):
    spec = get_arch("resnet18")
    import torchvision

    torch.manual_seed(7)
    src = torchvision.models.resnet18(weights=None, num_classes=10)  # a fine-tuned head: ignored
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    out = tmp_path / "r18.onnx"
    assert (
        main(
            [
                "--arch",
                "resnet18",
                "--weights",
                str(path),
                "--input-size",
                "64",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    meta = read_model_meta(str(out))
    assert meta.weights == "file:mine.pth"
    assert meta.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # the written model computes with exactly these weights
    from dn2.export.graph import build_graph
    from dn2.export.verify import ort_embed, torch_embed

    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    ref = torch_embed(build_graph(spec, src.eval()), x)
    assert np.abs(ort_embed(str(out), x) - ref).max() / np.abs(ref).max() < 1e-3


def test_weights_that_do_not_fit_name_the_keys(tmp_path, capsys):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["layer4.1.bn2.bias"]
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as exc:
        load_weights(get_arch("resnet18"), str(path))
    msg = str(exc.value)
    assert "1 missing keys: layer4.1.bn2.bias" in msg
    assert "1 unexpected keys: extra.weight" in msg
    assert "conv1.weight: expected (64, 3, 7, 7), found (64, 3, 3, 3)" in msg
    # resnet18 weights for resnet34: many missing keys, listed first few plus a count
    out = tmp_path / "r34.onnx"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    assert main(["--arch", "resnet34", "--weights", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing keys: layer1.2.conv1.weight" in err and "more)" in err
    assert "Traceback" not in err and _files(tmp_path) == ["bad.pth"]


@pytest.mark.parametrize("content", [b"not a torch file", b""])
def test_unreadable_weights_give_a_message(tmp_path, capsys, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    assert (
        main(["--arch", "resnet18", "--weights", str(path), "--output", str(tmp_path / "x.onnx")])
        == 2
    )
    err = capsys.readouterr().err
    assert f"cannot read {path}" in err and "Traceback" not in err
    assert (
        main(
            [
                "--arch",
                "resnet18",
                "--weights",
                str(tmp_path / "missing.pth"),
                "--output",
                str(tmp_path / "x.onnx"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert _files(tmp_path) == ["junk.pth"]
