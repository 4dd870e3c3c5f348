"""``python -m dn2.tools.faults --model MODEL.onnx [--json OUT]``: run every fault corpus and
print the table (kinds tried, refused, accepted, crashes, hangs, lost results).

Rows: the bad-image corpus through ``read_image`` (each file in a child process), ``dn2 score``
(one line per input?), ``dn2 fit`` and the ``dn2 watch`` folder source (every file a frame or a
reported skip?); the bundle-mutation fuzzer on an exact and an HNSW bundle; damaged MJPEG AVI
files through ``dn2 watch`` (every frame read or counted lost?). Run from a source checkout,
the image corpus also includes the test suite's hand-made kinds (tests/badfiles.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np

from dn2.runtime.bundle import read_manifest

from .corpus import build_families

BIN = os.path.dirname(sys.executable)


def _exe(name: str) -> str:
    return os.path.join(BIN, name)


def _image_corpus(work: Path) -> List[tuple]:
    files = [(n, p, e) for n, p, e in build_families(work / "families")]
    tests = Path(__file__).resolve().parents[2] / "tests"
    if (tests / "badfiles.py").is_file():  # a checkout: the hand-made kinds too
        sys.path.insert(0, str(tests))
        try:
            import badfiles

            for c in badfiles.build_corpus(work / "hand")[
                : len(badfiles.CASE_NAMES) - len(badfiles.FAMILY_NAMES)
            ]:
                if not c.skip:
                    files.append((c.name, c.path, "refused" if c.refused else "decoded"))
        except ImportError:  # Pillow missing: the packaged kinds only
            pass
    return files


def _row(
    what: str, cases: int, refused: int, accepted: int, crashes: int, hangs: int, lost: int
) -> Dict:
    return dict(
        what=what,
        cases=cases,
        refused=refused,
        accepted=accepted,
        crashes=crashes,
        hangs=hangs,
        lost=lost,
    )


def _read_rows(files) -> Dict:
    code = (
        "import sys, json\nfrom dn2.runtime.images import read_image\n"
        "from dn2.runtime.errors import ImageError\n"
        "for p in json.load(open(sys.argv[1])):\n"
        "    try:\n        read_image(p); r = 'decoded'\n"
        "    except ImageError as e:\n        r = 'refused' if ('expected' in str(e) and "
        "'found' in str(e)) else 'unclear'\n"
        "    print(r, flush=True)\n"
    )
    todo = [p for _, p, _ in files]
    got: List[str] = []
    crashes = hangs = 0
    while len(got) < len(todo):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(todo[len(got) :], f)
        try:
            r = subprocess.run(
                [sys.executable, "-c", code, f.name], capture_output=True, text=True, timeout=300
            )
            lines = r.stdout.split()
            got.extend(lines)
            if r.returncode != 0:
                crashes += 1
                got.append("crash")
        except subprocess.TimeoutExpired as exc:
            got.extend(
                (exc.stdout or b"").decode().split()
                if isinstance(exc.stdout, bytes)
                else (exc.stdout or "").split()
            )
            hangs += 1
            got.append("hang")
        finally:
            os.unlink(f.name)
    unclear = got.count("unclear")
    return _row(
        "bad images: read_image",
        len(todo),
        got.count("refused"),
        got.count("decoded"),
        crashes,
        hangs,
        unclear,
    )


def _score_row(bundle: Path, files) -> Dict:
    paths = [p for _, p, _ in files]
    try:
        r = subprocess.run(
            [_exe("dn2-score"), str(bundle), *paths, "--json"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return _row("bad images: dn2 score", len(paths), 0, 0, 0, 1, len(paths))
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    lost = sum(a != b.get("path") for a, b in zip(paths, rows)) + abs(len(paths) - len(rows))
    crash = int(r.returncode not in (0, 1) or "Traceback" in r.stderr)
    return _row(
        "bad images: dn2 score",
        len(paths),
        sum(x["score"] is None for x in rows),
        sum(x["score"] is not None for x in rows),
        crash,
        0,
        lost,
    )


def _fit_row(model: str, files, out: Path) -> Dict:
    files = [f for f in files if os.path.lexists(f[1])]  # fit refuses a missing input up front
    n = len(files)
    try:
        r = subprocess.run(
            [_exe("dn2-fit"), model, *[p for _, p, _ in files], "--output", str(out), "-q"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return _row("bad images: dn2 fit", n, 0, 0, 0, 1, n)
    crash = int(r.returncode not in (0, 2) or "Traceback" in r.stderr)
    fit = read_manifest(out).fit if r.returncode == 0 else None
    kept, failed = (fit.images or 0, fit.failed or 0) if fit is not None else (0, 0)
    return _row("bad images: dn2 fit", n, failed, kept, crash, 0, max(0, n - kept - failed))


def _watch_summary(bundle: Path, source: str) -> tuple:
    try:
        r = subprocess.run(
            [
                _exe("dn2-watch"),
                str(bundle),
                "--source",
                source,
                "--headless",
                "--json",
                "--stats-every",
                "0",
                "--reconnect-attempts",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return None, "hang"
    if "Traceback" in r.stderr or r.returncode not in (0, 3):
        return None, "crash"
    return json.loads(r.stdout.strip().splitlines()[-1]), ""


def _folder_row(bundle: Path, files, work: Path) -> Dict:
    from dn2.runtime.watch.sources import IMAGE_SUFFIXES

    flat = work / "flat"
    flat.mkdir()
    named = [p for _, p, _ in files if os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES]
    for i, p in enumerate(named):
        os.symlink(p, flat / f"{i:04d}{os.path.splitext(p)[1].lower()}")
    s, bad = _watch_summary(bundle, str(flat))
    if s is None:
        return _row(
            "bad images: dn2 watch folder",
            len(named),
            0,
            0,
            int(bad == "crash"),
            int(bad == "hang"),
            len(named),
        )
    return _row(
        "bad images: dn2 watch folder",
        len(named),
        s["skipped_items"],
        s["frames_read"],
        0,
        0,
        len(named) - s["skipped_items"] - s["frames_read"],
    )


def _video_rows(bundle: Path, work: Path) -> Dict:
    import cv2

    n, p = 600, work / "clip.avi"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (128, 96))
    rng = np.random.default_rng(0)
    for i in range(n):
        w.write(np.clip(rng.normal(100 + i % 50, 20, (96, 128, 3)), 0, 255).astype(np.uint8))
    w.release()
    raw = p.read_bytes()
    half = len(raw) // 2
    kinds = {
        "random bytes": raw[:half]
        + rng.integers(0, 256, len(raw) // 8, np.uint8).tobytes()
        + raw[half + len(raw) // 8 :],
        "zeros": raw[:half] + bytes(len(raw) // 20) + raw[half + len(raw) // 20 :],
        "truncated": raw[:half],
        "intact": raw,
    }
    crashes = hangs = lost_results = accounted_lost = read = 0
    for k, data in kinds.items():
        q = work / f"{k.replace(' ', '_')}.avi"
        q.write_bytes(data)
        s, bad = _watch_summary(bundle, str(q))
        crashes, hangs = crashes + (bad == "crash"), hangs + (bad == "hang")
        if s is not None:
            accounted_lost += s["lost_frames"]
            read += s["frames_read"]
            lost_results += n - s["frames_read"] - s["lost_frames"]
    return _row(
        f"MJPEG AVI x{len(kinds)} (intact, random bytes, zeros, truncated; {n} frames "
        f"each): frames counted lost / read",
        len(kinds) * n,
        accounted_lost,
        read,
        crashes,
        hangs,
        lost_results,
    )


def run(model: str, work: Path) -> List[Dict]:
    from dn2.runtime.fit import fit_bundle
    from dn2.runtime.modelmeta import read_model_meta

    from .fuzz import fuzz_bundle

    dim = read_model_meta(model).dim
    x = np.random.default_rng(0).normal(size=(120, dim)).astype(np.float32)
    bundles = {
        k: fit_bundle(
            model,
            work / f"bundle_{k}",
            embeddings=x,
            index=k,
            progress=False,
            hnsw={"M": 8, "ef_construction": 40, "ef": 16},
        )
        for k in ("exact", "hnsw")
    }
    files = _image_corpus(work / "images")
    rows = [
        _read_rows(files),
        _score_row(bundles["exact"], files),
        _fit_row(model, files, work / "fitted"),
        _folder_row(bundles["exact"], files, work),
    ]
    image = next(p for _, p, e in files if e == "decoded")
    for k, b in bundles.items():
        res = fuzz_bundle(b, image)
        rows.append(
            _row(
                f"bundle mutations ({k} bank): dn2 score",
                len(res),
                sum(r.rc == 2 and r.lines == 1 for r in res),
                sum(r.rc == 0 for r in res),
                sum(r.crash for r in res),
                sum(r.hang for r in res),
                sum(r.rc not in (0, 2) or (r.rc == 2 and r.lines != 1) for r in res),
            )
        )
    rows.append(_video_rows(bundles["exact"], work))
    return rows


def table(rows: List[Dict]) -> str:
    head = (
        "| what | cases | refused | accepted | crashes | hangs | lost results |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r['what']} | {r['cases']} | {r['refused']} | {r['accepted']} | {r['crashes']} | "
        f"{r['hangs']} | {r['lost']} |"
        for r in rows
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dn2.tools.faults", description=__doc__)
    p.add_argument("--model", required=True, help="a dn2 ONNX model (any size)")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dn2-faults-") as d:
        rows = run(a.model, Path(d))
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    bad = sum(r["crashes"] + r["hangs"] + r["lost"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
