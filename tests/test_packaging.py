"""The distribution maps the repo's top-level folders to dn2.cli / dn2.export / dn2.runtime /
dn2.tools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"cli": "dn2.cli", "export": "dn2.export", "runtime": "dn2.runtime", "tools": "dn2.tools"}


def _pyproject():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set()
    for folder, pkg in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    assert found == listed, f"pyproject packages {sorted(listed)} != folders {sorted(found)}"


def test_base_dependencies_are_lean():
    deps = " ".join(_pyproject()["project"]["dependencies"]).lower()
    for heavy in ("torch", "torchvision", "onnx>", "onnx=", "tensorrt", "scikit", "matplotlib"):
        assert heavy not in deps, f"{heavy} must not be a base dependency"


def test_console_scripts_resolve():
    import importlib

    for name, target in _pyproject()["project"]["scripts"].items():
        module, func = target.split(":")
        mod = importlib.import_module(module)
        assert callable(getattr(mod, func)), f"{name} -> {target} is not callable"


def test_installed_as_dn2_namespace():
    import dn2.runtime

    assert Path(dn2.runtime.__file__).resolve().parent == ROOT / "runtime"
    assert dn2.runtime.__version__ == _pyproject()["project"]["version"]
