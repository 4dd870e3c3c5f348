"""The import direction: cli -> tools -> export -> runtime, never backwards.

* dn2.runtime (the lean edge install) imports neither dn2.export nor dn2.tools nor dn2.cli, in
  any function (static: every import statement of every runtime/*.py, and every
  importlib.import_module / __import__ of a literal name) and in fact (dynamic: importing every
  runtime module in a fresh interpreter leaves none of them, nor torch, in sys.modules);
* dn2.export does not import dn2.tools nor dn2.cli; dn2.tools does not import dn2.cli.
test_lean.py checks the no-torch half of the promise on real fit / score runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDER = {"dn2.runtime": "runtime", "dn2.export": "export", "dn2.tools": "tools", "dn2.cli": "cli"}
FORBIDDEN = {
    "dn2.runtime": ("dn2.export", "dn2.tools", "dn2.cli", "torch", "torchvision"),
    "dn2.export": ("dn2.tools", "dn2.cli"),
    "dn2.tools": ("dn2.cli",),
}


def _module_name(pkg: str, path: Path) -> List[str]:
    rel = path.relative_to(ROOT / FOLDER[pkg]).with_suffix("").parts
    parts = pkg.split(".") + list(rel)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_names(path: Path, here: List[str]) -> List[tuple]:
    """(line, absolute module name) of every import in ``path`` (module ``here``, as parts),
    relative ones resolved."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value))
    return out


def _hits(name: str, forbidden) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_no_import_statement_points_the_wrong_way(pkg):
    files = sorted((ROOT / FOLDER[pkg]).rglob("*.py"))
    assert len(files) > 3, files
    offenders = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in files
        for line, name in imported_names(p, _module_name(pkg, p))
        if _hits(name, FORBIDDEN[pkg])
    ]
    assert not offenders, "\n".join(offenders)


def test_the_static_check_sees_relative_and_dynamic_imports(tmp_path):
    """The checker itself: a relative import that climbs out of the runtime, an absolute one
    and an importlib call with a literal name are all seen."""
    probe = tmp_path / "probe.py"  # as if it were dn2/runtime/watch/probe.py
    probe.write_text(
        "from ...export import cli\nimport importlib\n"
        "importlib.import_module('dn2.tools.eval')\nfrom dn2.cli import main\n"
    )
    names = [n for _, n in imported_names(probe, ["dn2", "runtime", "watch", "probe"])]
    assert "dn2.export" in names and "dn2.tools.eval" in names and "dn2.cli" in names


def test_importing_every_runtime_module_loads_no_other_layer():
    mods = sorted(
        ".".join(_module_name("dn2.runtime", p)) for p in (ROOT / "runtime").rglob("*.py")
    )
    assert "dn2.runtime.detector" in mods and "dn2.runtime.watch.loop" in mods
    code = (
        f"import importlib, json, sys\n"
        f"for m in {mods!r}:\n"
        f"    importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')"
        f" or m.startswith(('dn2.export', 'dn2.tools', 'dn2.cli')))\n"
        f"print('LAYERS ' + json.dumps(bad))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("LAYERS ")][-1]
    assert json.loads(line[len("LAYERS ") :]) == []


def test_importing_every_export_module_loads_no_tools():
    mods = sorted(".".join(_module_name("dn2.export", p)) for p in (ROOT / "export").rglob("*.py"))
    code = (
        f"import importlib, json, sys\n"
        f"for m in {mods!r}:\n"
        f"    importlib.import_module(m)\n"
        f"print('LAYERS ' + json.dumps(sorted(m for m in sys.modules "
        f"if m.startswith(('dn2.tools', 'dn2.cli')))))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("LAYERS ")][-1]
    assert json.loads(line[len("LAYERS ") :]) == []
