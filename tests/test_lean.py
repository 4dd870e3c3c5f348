"""The lean promise: fitting and scoring never import torch (nor torchvision).

Each check runs in a fresh interpreter, where a meta-path hook records (and refuses) any
attempt to import torch, so even a guarded ``try: import torch`` is caught.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dn2.runtime

from textures import write_images
from tiny_model import make_tiny_model

HEAVY = ("torch", "torchvision")
GUARD = textwrap.dedent("""
    import sys
    ATTEMPTS = []
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HEAVY!r}:
                ATTEMPTS.append(name)
                raise ImportError("lean runtime must not import " + name)
            return None
    sys.meta_path.insert(0, _NoTorch())
""").replace("{HEAVY!r}", repr(set(HEAVY)))
REPORT = textwrap.dedent("""
    import json
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
    print("LEAN-REPORT " + json.dumps({"attempts": ATTEMPTS, "loaded": heavy}))
""").replace("{HEAVY!r}", repr(set(HEAVY)))


def run_lean(body: str, timeout: int = 300) -> dict:
    code = GUARD + textwrap.dedent(body) + REPORT
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("LEAN-REPORT ")][-1]
    return json.loads(line[len("LEAN-REPORT ") :])


def test_fit_and_score_never_import_torch(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.onnx")
    write_images(tmp_path / "normal", 30, "normal")
    anom = write_images(tmp_path / "anom", 3, "anomalous")
    bundle = tmp_path / "bundle"
    rep = run_lean(f"""
        from dn2.runtime import fit_cli, score_cli
        from dn2.runtime.detector import Detector
        rc = fit_cli.main([{str(model)!r}, {str(tmp_path / "normal")!r}, "--output",
                           {str(bundle)!r}, "--kmeans", "10", "--clean", "0.2",
                           "--group-size", "3", "--groups", "50", "-q"])
        assert rc == 0, rc
        rc = score_cli.main([{str(bundle)!r}, {str(anom[0])!r}, "--json"])
        assert rc == 0, rc
        rc = score_cli.main([{str(bundle)!r}, *{[str(a) for a in anom]!r}, "--group"])
        assert rc == 0, rc
        det = Detector.load({str(bundle)!r})
        assert det.score_paths([{str(anom[1])!r}])[0].anomalous
    """)
    assert rep == {"attempts": [], "loaded": []}


def test_no_runtime_module_imports_torch():
    pkg_dir = Path(dn2.runtime.__file__).parent
    mods = sorted(
        "dn2.runtime." + ".".join(p.relative_to(pkg_dir).with_suffix("").parts)
        for p in pkg_dir.rglob("*.py")
    )
    mods = [m[: -len(".__init__")] if m.endswith(".__init__") else m for m in mods]
    assert "dn2.runtime.bank" in mods and "dn2.runtime.detector" in mods
    rep = run_lean(f"""
        import importlib
        for name in {mods!r}:
            importlib.import_module(name)
    """)
    assert rep == {"attempts": [], "loaded": []}
    # and no function imports it lazily either (static check of every runtime source file)
    offenders = []
    for p in pkg_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{p.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in HEAVY]
    assert not offenders, offenders


@pytest.mark.parametrize("cli", ["dn2-fit", "dn2-score"])
def test_console_scripts_start_without_torch(cli):
    rep = run_lean(f"""
        from dn2.runtime import {"fit_cli" if cli == "dn2-fit" else "score_cli"} as cli
        assert cli.main(["--help"]) == 0
    """)
    assert rep == {"attempts": [], "loaded": []}
