"""The bundle-mutation fuzzer: every case exits 0 (harmless) or 2 with a one-line reason.

``cases(manifest, files)`` lists mutations of a bundle; ``run_cases(bundle, image, cases)``
applies each to a copy and runs ``dn2 score`` on it inside one child process (``python -m
dn2.tools.faults.fuzz``), one JSON line per case. A child that dies (a native crash) or stays
silent past ``timeout`` (a hang) is recorded against the case it was running, and a new child
goes on with the next case.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

MANIFEST = "dn2.json"
# fields the runtime reads (manifest.py's schema): a wrong value there must be refused
SCHEMA_FIELDS = {
    "model": ("file", "sha256", "dim", "input", "arch"),
    "bank": ("kind", "file", "sha256", "n", "dim", "metric", "M", "ef_construction", "ef"),
    "score": ("k", "reduction", "l2norm", "jpeg_draft"),
    "threshold": ("value",),
}
VALUES = {  # wrong type / extreme values tried on every field
    "missing": None,
    "string": "abc",
    "number-as-string": "1280",
    "list": [1, 2],
    "null": None,
    "true": True,
    "negative": -1,
    "zero": 0,
    "huge": 10**12,
    "float-huge": 1e308,
    "int64-overflow": 2**63,
    "object": {"a": 1},
}


@dataclass
class Case:
    kind: str  # manifest | file
    target: str  # field path or file name
    mutation: str
    recompute: bool = False  # the attacker also rewrites the sha256 digests

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.target}:{self.mutation}" + (
            " +digests" if self.recompute else ""
        )


@dataclass
class Outcome:
    case: str
    rc: Optional[int]  # None: crashed natively or hung
    message: str
    crash: bool = False
    hang: bool = False
    lines: int = 0  # stderr lines of the refusal


def cases(manifest: Dict, files: List[str]) -> List[Case]:
    out: List[Case] = []
    for sec in ("model", "bank", "score", "threshold", "files", "group", "fit"):
        out.append(Case("manifest", sec, "missing"))
        out.append(Case("manifest", sec, "list"))
    for sec, keys in SCHEMA_FIELDS.items():
        for k in keys:
            if k in (manifest.get(sec) or {}):
                out.extend(Case("manifest", f"{sec}.{k}", v) for v in VALUES)
    for name in sorted(manifest.get("fit") or {})[:4]:  # record fields: harmless either way
        out.append(Case("manifest", f"fit.{name}", "string"))
    out.append(Case("manifest", "schema_version", "true"))
    out.append(Case("manifest", "", "deep-nesting"))
    out.append(Case("manifest", "", "not-json"))
    out.append(Case("manifest", "", "empty"))
    for f in files:
        for rec in (False, True):
            for m in (
                "flip-first",
                "flip-8",
                "flip-96",
                "flip-middle",
                "flip-last",
                "truncate-half",
                "truncate-empty",
                "npz",
                "png",
                "json",
                "text",
                "swap",
            ):
                out.append(Case("file", f, m, rec))
    return out


def _set(m: Dict, path: str, mutation: str) -> None:
    keys = path.split(".")
    parent = m
    for k in keys[:-1]:
        parent = parent.setdefault(k, {}) if isinstance(parent.get(k), dict) else {}
    if mutation == "missing":
        parent.pop(keys[-1], None)
    else:
        parent[keys[-1]] = VALUES[mutation]


def _other_format(kind: str) -> bytes:
    import cv2
    import numpy as np

    if kind == "npz":
        b = io.BytesIO()
        np.savez(b, a=np.zeros((3, 4), np.float32))
        return b.getvalue()
    if kind == "png":
        return cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    if kind == "json":
        return b'{"schema": "dn2-bundle"}'
    return b"hello, this is not the file you are looking for\n"


def apply(case: Case, bundle: Path) -> None:
    """Mutate the bundle folder in place."""
    mp = bundle / MANIFEST
    if case.kind == "manifest":
        if case.mutation == "deep-nesting":
            mp.write_text("[" * 200_000 + "]" * 200_000)
            return
        if case.mutation in ("not-json", "empty"):
            mp.write_text("{model: " if case.mutation == "not-json" else "")
            return
        m = json.loads(mp.read_text())
        _set(m, case.target, case.mutation)
        mp.write_text(json.dumps(m, indent=1))
        return
    p = bundle / case.target
    raw = p.read_bytes()
    mut = case.mutation
    if mut.startswith("flip-"):
        at = {"first": 0, "8": 8, "96": 96, "middle": len(raw) // 2, "last": len(raw) - 1}[mut[5:]]
        b = bytearray(raw)
        b[min(at, len(b) - 1)] ^= 0xFF
        data = bytes(b)
    elif mut == "truncate-half":
        data = raw[: len(raw) // 2]
    elif mut == "truncate-empty":
        data = b""
    elif mut == "swap":
        others = sorted(x.name for x in bundle.iterdir() if x.name not in (case.target, MANIFEST))
        data = (bundle / others[0]).read_bytes() if others else raw[::-1]
    else:
        data = _other_format(mut)
    p.write_bytes(data)
    if case.recompute and case.target != MANIFEST:  # what anyone who can write the bundle can do
        m = json.loads(mp.read_text())
        d = hashlib.sha256(data).hexdigest()
        m.setdefault("files", {})[case.target] = d
        for sec in (m.get("model"), m.get("bank"), (m.get("group") or {}).get("bank")):
            if isinstance(sec, dict) and sec.get("file") == case.target:
                sec["sha256"] = d
        mp.write_text(json.dumps(m, indent=1))


def _score(bundle: Path, image: str) -> Tuple[int, str]:
    from dn2.runtime.score_cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main([str(bundle), image, "--json", "--threads", "1"])
        except SystemExit as exc:  # noqa: PERF203 - argparse
            rc = int(exc.code or 0)
        except Exception as exc:  # noqa: BLE001 - a traceback is what the fuzzer reports
            return 1, f"Traceback: {type(exc).__name__}: {exc}"
    return rc, err.getvalue()


def child(spec_path: str) -> None:
    """Run the cases of a spec file, one JSON line per case on stdout."""
    spec = json.loads(Path(spec_path).read_text())
    base, image = Path(spec["bundle"]), spec["image"]
    work = Path(tempfile.mkdtemp(prefix="dn2-fuzz-"))
    try:
        for i, c in enumerate(spec["cases"]):
            case = Case(**c)
            b = work / f"b{i}"
            shutil.copytree(base, b)
            apply(case, b)
            rc, err = _score(b, image)
            shutil.rmtree(b, ignore_errors=True)
            print(json.dumps({"i": i, "rc": rc, "err": err}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_cases(bundle, image, todo: List[Case], timeout: float = 120.0) -> List[Outcome]:
    """Each case in a child process (one child for many; a new one after a crash or hang)."""
    results: Dict[int, Outcome] = {}
    start = 0
    while start < len(todo):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(
                {
                    "bundle": str(bundle),
                    "image": str(image),
                    "cases": [asdict(c) for c in todo[start:]],
                },
                f,
            )
        try:
            start = _one_child(f.name, todo, start, results, timeout)
        finally:
            os.unlink(f.name)
    return [results[i] for i in range(len(todo))]


def _one_child(spec: str, todo, start: int, results, timeout: float) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dn2.tools.faults.fuzz", spec],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    done = start
    try:
        for line in _lines(proc, timeout):
            r = json.loads(line)
            i = start + r["i"]
            err = r["err"].strip()
            results[i] = Outcome(
                todo[i].name,
                r["rc"],
                err.splitlines()[-1] if err else "",
                lines=len(err.splitlines()),
            )
            done = i + 1
    except TimeoutError:
        proc.kill()
        results[done] = Outcome(
            todo[done].name, None, f"no answer within {timeout:.0f} s", hang=True
        )
        return done + 1
    proc.wait()
    if done < len(todo):  # the child died inside case `done`
        results[done] = Outcome(
            todo[done].name, None, f"child died (rc {proc.returncode})", crash=True
        )
        return done + 1
    return done


def _lines(proc, timeout: float) -> Iterator[str]:
    """The child's stdout lines; TimeoutError when it says nothing for ``timeout`` seconds."""
    import selectors

    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode("utf-8", "replace")
        if not sel.select(timeout):
            raise TimeoutError
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        buf += chunk


def fuzz_bundle(bundle, image, timeout: float = 120.0) -> List[Outcome]:
    b = Path(bundle)
    m = json.loads((b / MANIFEST).read_text())
    files = sorted(p.name for p in b.iterdir() if p.is_file())
    return run_cases(b, image, cases(m, files), timeout)


if __name__ == "__main__":
    child(sys.argv[1])
