"""``dn2 checks``: what this machine gives dn2 (like ``yolo checks``).

dn2 and Python; numpy and its BLAS; onnxruntime, its version and its execution providers;
OpenCV and its video back-ends (cameras, files, streams: ``cv2.videoio_registry``); hnswlib;
the optional extras (torch, faiss, TensorRT, ...); and the CPU (model, cores, SIMD features).
``--json`` prints the same as one JSON object. Never imports torch: an extra is reported as
installed or not from its package metadata.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import sys
from typing import Dict, List, Optional

from dn2.runtime.cliargs import EXIT_OK, new_parser, parse_args

# extra -> distributions it brings (reported by version, never imported)
EXTRAS = {
    "export": ["torch", "torchvision", "onnx"],
    "tools": ["scikit-learn", "matplotlib", "conformal-clip-data"],
    "kmeans": ["faiss-cpu"],
    "gpu": ["onnxruntime-gpu"],
    "tensorrt": ["tensorrt", "cuda-python"],
    "config": ["pyyaml"],
}
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "neon",
    "asimd",
    "asimddp",
    "sve",
)


def _dist_version(name: str) -> Optional[str]:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _module(name: str):
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # noqa: BLE001 - a broken install is what checks reports
        return None, f"{type(exc).__name__}: {exc}"


def _onnxruntime() -> Dict:
    ort, err = _module("onnxruntime")
    if ort is None:
        return {"installed": False, "error": err}
    return {
        "installed": True,
        "version": ort.__version__,
        "device": ort.get_device(),
        "providers": list(ort.get_available_providers()),
    }


def _opencv() -> Dict:
    cv2, err = _module("cv2")
    if cv2 is None:
        return {"installed": False, "error": err}
    out = {"installed": True, "version": cv2.__version__}
    reg = getattr(cv2, "videoio_registry", None)
    if reg is not None:
        out["video_backends"] = _names(reg, reg.getBackends())
        out["camera_backends"] = _names(reg, reg.getCameraBackends())
        out["file_backends"] = _names(reg, reg.getStreamBackends())
    info = cv2.getBuildInformation()
    out["gstreamer"] = _build_flag(info, "GStreamer")
    out["ffmpeg"] = _build_flag(info, "FFMPEG")
    out["threads"] = cv2.getNumThreads()
    return out


def _names(reg, backends) -> List[str]:
    """Back-end names in OpenCV's order of preference, each once."""
    return list(dict.fromkeys(reg.getBackendName(b) for b in backends))


def _build_flag(info: str, key: str) -> Optional[bool]:
    for line in info.splitlines():
        if line.strip().startswith(key + ":"):
            return line.split(":", 1)[1].strip().upper().startswith("YES")
    return None


def _cpu() -> Dict:
    out = {"machine": platform.machine(), "cores": os.cpu_count(), "model": platform.processor()}
    try:
        out["cores_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    flags: List[str] = []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key == "model name" and ":" in line:
                    out["model"] = line.split(":", 1)[1].strip()
                if key in ("flags", "Features") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    out["features"] = [f for f in CPU_FLAGS if f in flags]
    return out


def collect() -> Dict:
    """Everything ``dn2 checks`` reports, as a JSON-ready dict."""
    from dn2.runtime.version import __version__

    np, np_err = _module("numpy")
    hnsw_version = _dist_version("hnswlib")
    report = {
        "dn2": {
            "version": __version__,
            "path": os.path.dirname(importlib.util.find_spec("dn2.runtime").origin),
        },
        "python": {
            "version": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "numpy": {
            "installed": np is not None,
            "version": getattr(np, "__version__", None),
            "error": np_err,
        },
        "onnxruntime": _onnxruntime(),
        "opencv": _opencv(),
        "hnswlib": {
            "installed": importlib.util.find_spec("hnswlib") is not None,
            "version": hnsw_version,
        },
        "extras": {extra: {d: _dist_version(d) for d in dists} for extra, dists in EXTRAS.items()},
        "cpu": _cpu(),
    }
    if np is not None:
        report["numpy"]["blas"] = _blas()
    return report


def _blas() -> Optional[str]:
    try:
        from threadpoolctl import threadpool_info

        libs = dict.fromkeys(
            f"{i.get('internal_api')} {i.get('version') or ''} "
            f"({i.get('num_threads')} threads)".replace("  ", " ")
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
        return ", ".join(libs) or None
    except Exception:  # noqa: BLE001 - informational only
        return None


def _yes(v) -> str:
    return "yes" if v else "no"


def text(report: Dict) -> str:
    ort, cv, ext = report["onnxruntime"], report["opencv"], report["extras"]
    rows = [
        ("dn2", f"{report['dn2']['version']}  ({report['dn2']['path']})"),
        ("python", f"{report['python']['version']}  ({report['python']['executable']})"),
        ("platform", report["python"]["platform"]),
        ("numpy", report["numpy"]["version"] or f"MISSING ({report['numpy']['error']})"),
        ("  blas", report["numpy"].get("blas") or "-"),
        (
            "onnxruntime",
            f"{ort['version']}  device {ort['device']}"
            if ort["installed"]
            else f"MISSING ({ort['error']})",
        ),
        ("  providers", ", ".join(ort.get("providers", [])) or "-"),
        ("opencv", cv["version"] if cv["installed"] else f"MISSING ({cv['error']})"),
    ]
    if cv["installed"]:
        rows += [
            ("  video back-ends", ", ".join(cv.get("video_backends", [])) or "-"),
            ("  camera back-ends", ", ".join(cv.get("camera_backends", [])) or "-"),
            ("  file back-ends", ", ".join(cv.get("file_backends", [])) or "-"),
            ("  gstreamer / ffmpeg", f"{_yes(cv['gstreamer'])} / {_yes(cv['ffmpeg'])}"),
        ]
    rows.append(
        (
            "hnswlib",
            report["hnswlib"]["version"]
            or ("installed" if report["hnswlib"]["installed"] else "MISSING"),
        )
    )
    for extra, dists in ext.items():
        got = ", ".join(f"{d} {v}" for d, v in dists.items() if v)
        rows.append((f"dn2[{extra}]", got or "not installed"))
    cpu = report["cpu"]
    rows += [
        (
            "cpu",
            f"{cpu['model'] or cpu['machine']}  ({cpu['machine']}, {cpu['cores']} cores"
            + (f", {cpu['cores_usable']} usable" if "cores_usable" in cpu else "")
            + ")",
        ),
        ("  features", " ".join(cpu["features"]) or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def problems(report: Dict) -> List[str]:
    """What stops the lean runtime from working here."""
    out = [
        f"{k} is missing"
        for k in ("numpy", "onnxruntime", "opencv", "hnswlib")
        if not report[k]["installed"]
    ]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = new_parser("checks", __doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = parse_args(p, argv)
    report = collect()
    bad = problems(report)
    if a.json:
        print(json.dumps(dict(report, problems=bad), indent=2))
    else:
        print(text(report))
        for msg in bad:
            print(f"problem: {msg}", file=sys.stderr)
    return EXIT_OK if not bad else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
