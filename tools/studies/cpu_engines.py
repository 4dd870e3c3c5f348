"""Which CPU inference engine and which onnxruntime levers run the dn2 model fastest here:
onnxruntime (the runtime's own backend, and its levers) against OpenVINO's CPU plugin and
torch-eager, on the dn2 export's own fp32 and int8 (QDQ, the gate's choice) ONNX files.

    python -m dn2.tools.studies.cpu_engines --arch resnet101 --weights none --work-dir W [--json OUT]

Bare model only (the model stage of ``dn2 bench``): seeded 1280x720 JPEG frames made like the
bench's (the int8 model calibrated on 16 of them, the study on ``--frames`` others), prepared
once by the runtime (uint8 NHWC BGR), fed to every engine. The engines' calls are alternated
one by one (round r calls every engine once), so load drift on a shared machine hits all of
them alike; a row's "x baseline" is the median over rounds of the per-round speed ratio
(q25-q75 beside it), and the CPU seconds per image (``time.process_time``, all threads) are a
second, load-robust measure for engines whose threads do not spin (onnxruntime as the runtime
opens it, OpenVINO; torch's OpenMP pool spins, so its CPU time is not comparable and its
ratio is to onnxruntime fp32's wall time only).

Rows: ``ort`` (``dn2.runtime.embedder.Embedder`` on the CPU provider, one session, the
baseline), ``ort-spin`` (intra-op spinning on), ``ort-daz`` (denormals as zero), ``ort-split``
(the runtime's ``cpu_split``: batch 8 split over two sessions, ``--threads`` shared out, run
side by side), ``ov`` (OpenVINO CPU, static batch, hint LATENCY, inference precision f32, 1
stream, ``--threads`` threads), ``ov-tput`` (hint THROUGHPUT, 1
stream), ``ov-2streams`` (batch 8 as two halves on 2 streams), ``torch-eager``. Agreement with
the onnxruntime fp32 embedding on every study frame: min / mean cosine and the export gate's kNN
rank agreement (``dn2.export.gate.rank_agreement``). Also printed: the op types onnxruntime's
optimiser leaves in each graph (NCHWc convolutions, QLinearConv / QLinearAdd) and the load.
OpenVINO rows need ``pip install 'dn2[openvino]'`` (skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

Engine = Callable[[np.ndarray], np.ndarray]


def _log(msg: str) -> None:
    print(f"[cpu-engines] {msg}", file=sys.stderr, flush=True)


def ort_session(path: str, threads: int, **config: str) -> Engine:
    """A bare onnxruntime CPU session with the runtime's session defaults plus ``config``."""
    import onnxruntime as ort

    from dn2.runtime.modelmeta import EMBEDDING, INPUT_NAME
    from dn2.runtime.ort_backend import CPU_SESSION_DEFAULTS

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    for k, v in {**CPU_SESSION_DEFAULTS, **config}.items():
        so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run([EMBEDDING], {INPUT_NAME: x})[0]


def ov_engine(path: str, batch: int, threads: int, hint: str = "LATENCY", streams: int = 1):
    """OpenVINO CPU over the ONNX file, static batch; ``streams`` 2 runs two halves at once."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    model = core.read_model(path)
    size = int(model.inputs[0].get_partial_shape()[1].get_length())
    model.reshape({model.inputs[0].get_any_name(): [batch // streams, size, size, 3]})
    compiled = core.compile_model(
        model,
        "CPU",
        {
            props.inference_num_threads: threads,
            hints.inference_precision: ov.Type.f32,
            hints.performance_mode: getattr(hints.PerformanceMode, hint),
            props.num_streams: streams,
        },
    )
    out = next(o for o in compiled.outputs if "embedding" in o.get_names())
    if streams == 1:
        req = compiled.create_infer_request()
        return lambda x: req.infer({0: x})[out]
    queue, got = ov.AsyncInferQueue(compiled, streams), {}
    queue.set_callback(lambda r, i: got.__setitem__(i, r.get_tensor(out).data.copy()))

    def run(x):
        step = len(x) // streams
        for i in range(streams):
            queue.start_async({0: x[i * step : (i + 1) * step]}, i)
        queue.wait_all()
        return np.concatenate([got[i] for i in range(streams)])

    return run


def torch_engine(arch: str, weights: str, threads: int) -> Engine:
    """The eager torch trunk on the same pixels (BGR -> RGB, normalised), as ``dn2 bench``'s."""
    import torch

    from dn2.tools.bench.models import torch_trunk

    torch.set_num_threads(threads)
    trunk, spec = torch_trunk(arch, weights)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def run(x):
        t = torch.from_numpy(x[..., ::-1].copy()).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            return trunk(((t - mean) / std).contiguous()).numpy()

    return run


def optimized_ops(path: str) -> List[Tuple[str, int]]:
    """Op types (domain:op) onnxruntime's CPU optimiser leaves in the graph, most common first."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="dn2-ops-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        g = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    c = collections.Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in g.node)
    return c.most_common()


def agreement(ref: np.ndarray, out: np.ndarray) -> Dict[str, float]:
    from dn2.export.gate import rank_agreement

    a, b = ref.astype(np.float64), np.asarray(out, np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {
        "cos_min": round(float(cos.min()), 5),
        "cos_mean": round(float(cos.mean()), 5),
        "rank": round(rank_agreement(ref, np.asarray(out)), 4),
    }


def time_engines(engines: Dict[Tuple[str, int], Engine], frames, rounds: Dict[int, int]):
    """Per (name, batch): wall and CPU seconds of every call, calls alternated per round."""
    wall: Dict[Tuple[str, int], List[float]] = {k: [] for k in engines}
    cpu: Dict[Tuple[str, int], List[float]] = {k: [] for k in engines}
    for b in sorted({b for _, b in engines}):
        x = np.ascontiguousarray(frames[np.arange(b) % len(frames)])
        group = [(k, f) for k, f in engines.items() if k[1] == b]
        for _, f in group:  # warm-up, not counted
            f(x)
        for _ in range(rounds[b]):
            for k, f in group:
                c0, t0 = time.process_time(), time.perf_counter()
                f(x)
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        _log(f"batch {b}: {rounds[b]} rounds, load {[round(v, 2) for v in os.getloadavg()]}")
    return wall, cpu


def summarise(wall, cpu, base_of: Callable[[str], str]) -> List[Dict[str, object]]:
    rows = []
    for (name, b), w in wall.items():
        w = np.asarray(w)
        base = (base_of(name), b)
        ratio = np.asarray(wall[base]) / w
        c = float(np.median(cpu[(name, b)]))
        rows.append(
            {
                "engine": name,
                "batch": b,
                "img_per_s": round(b / float(np.median(w)), 3),
                "baseline": base[0],
                "x_baseline": round(float(np.median(ratio)), 3),
                "x_baseline_q25": round(float(np.percentile(ratio, 25)), 3),
                "x_baseline_q75": round(float(np.percentile(ratio, 75)), 3),
                "cpu_s_per_img": round(c / b, 4),
                "x_baseline_cpu": (
                    None if name.startswith("torch") else round(float(np.median(cpu[base])) / c, 3)
                ),
            }
        )
    return rows


def base_of(name: str) -> str:
    """The onnxruntime row an engine is compared with: int8 rows with ort-int8, else ort-fp32."""
    return "ort-int8" if "int8" in name else "ort-fp32"


def run_study(
    arch: str,
    weights: str,
    work: Path,
    threads: int = 2,
    input_size: int = 224,
    n_frames: int = 32,
    rounds1: int = 36,
    rounds8: int = 12,
    openvino: bool = True,
    with_torch: bool = True,
) -> Dict[str, object]:
    from dn2.runtime.embedder import Embedder
    from dn2.runtime.images import prepare, read_image
    from dn2.tools.bench.frames import make_frames
    from dn2.tools.bench.models import export_models

    load_start = [round(v, 2) for v in os.getloadavg()]
    work.mkdir(parents=True, exist_ok=True)
    make_frames(work / "frames", 16, (1280, 720))  # the bench's calibration frames (seed 0)
    models = export_models(
        arch, weights, input_size, work, ("fp32", "int8"), str(work / "frames"), _log
    )
    paths = {p: str(m["path"]) for p, m in models.items()}
    # the study's frames: other crops and noise (seed 1) than the int8 calibration frames
    frames_paths = make_frames(work / "study-frames", n_frames, (1280, 720), seed=1)
    emb = {
        (p, split): Embedder(m, providers="cpu", threads=threads, batch_size=8, cpu_split=split)
        for p, m in paths.items()
        for split in (False, True)
    }
    frames = np.stack(
        [prepare(read_image(str(p)), emb["fp32", False].meta.resize) for p in frames_paths]
    )
    notes = []
    if openvino:
        try:
            import openvino  # noqa: F401
        except ImportError:
            openvino = False
            notes.append(
                "OpenVINO rows skipped: openvino is not installed (pip install 'dn2[openvino]')"
            )
    engines: Dict[Tuple[str, int], Engine] = {}
    for b in (1, 8):
        if with_torch:
            engines[("torch-eager", b)] = torch_engine(arch, weights, threads)
        for p, path in paths.items():
            engines[(f"ort-{p}", b)] = emb[p, False].embed_batch
            engines[(f"ort-{p}-spin", b)] = ort_session(
                path, threads, **{"session.intra_op.allow_spinning": "1"}
            )
            engines[(f"ort-{p}-daz", b)] = ort_session(
                path, threads, **{"session.set_denormal_as_zero": "1"}
            )
            if b == 8:
                engines[(f"ort-{p}-split", b)] = emb[p, True].embed_batch
            if openvino:
                engines[(f"ov-{p}", b)] = ov_engine(path, b, threads)
                engines[(f"ov-{p}-tput", b)] = ov_engine(path, b, threads, "THROUGHPUT")
                if b == 8:
                    engines[(f"ov-{p}-2streams", b)] = ov_engine(path, b, threads, "THROUGHPUT", 2)
    ref = emb["fp32", False].embed_batch(frames)
    acc = {}
    for (name, b), f in engines.items():
        if b == 8:
            out = np.concatenate(
                [np.asarray(f(frames[i : i + 8])) for i in range(0, len(frames) - 7, 8)]
            )
            acc[name] = agreement(ref[: len(out)], out)
            _log(f"agreement {name} vs ort-fp32: {acc[name]}")
    wall, cpu = time_engines(engines, frames, {1: rounds1, 8: rounds8})
    from dn2.tools.bench.report import machine_info

    info = machine_info()
    if openvino:
        import openvino as ov

        info["versions"]["openvino"] = ov.__version__
    return {
        "config": {
            "arch": arch,
            "weights": weights,
            "input_size": input_size,
            "threads": threads,
            "frames": len(frames),
            "rounds": {"1": rounds1, "8": rounds8},
        },
        "machine": info,
        "load_avg_start": load_start,
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "int8_choice": _choice(paths["int8"]),
        "ops": {p: optimized_ops(path) for p, path in paths.items()},
        "agreement": acc,
        "rows": summarise(wall, cpu, base_of),
        "notes": notes,
    }


def _choice(path: str) -> Optional[Dict]:
    from dn2.runtime.modelmeta import K_INT8_CHOICE, read_model_meta

    text = read_model_meta(path).extra.get(K_INT8_CHOICE)
    return json.loads(text) if text else None


def format_report(res: Dict[str, object]) -> str:
    m, c = res["machine"], res["config"]
    lines = [
        f"{c['arch']} weights={c['weights']} {c['input_size']}px, {c['frames']} frames, "
        f"{c['threads']} threads, rounds {c['rounds']}",
        f"machine: {m['cpu']}, {m['cores']} cores, simd {' '.join(m['simd'])}; load avg at start "
        f"{res['load_avg_start']} end {res['load_avg_end']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
    ]
    ch = res.get("int8_choice")
    if ch:
        lines.append(
            f"int8 model: gate chose {ch['settings']} on {ch['kernels']} onnxruntime kernels"
        )
    for p, ops in res["ops"].items():
        lines.append(f"onnxruntime optimised {p} graph: " + ", ".join(f"{o} x{n}" for o, n in ops))
    lines += [
        "",
        "| engine | batch | img/s | x baseline (wall, q25-q75) | CPU s/img | x baseline (CPU time) | "
        "cos min | cos mean | kNN rank vs ort-fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        a = res["agreement"].get(r["engine"], {})
        xc = "-" if r["x_baseline_cpu"] is None else f"{r['x_baseline_cpu']:.3f}"
        lines.append(
            f"| {r['engine']} | {r['batch']} | {r['img_per_s']:.2f} | {r['x_baseline']:.3f} "
            f"({r['x_baseline_q25']:.3f}-{r['x_baseline_q75']:.3f}) vs {r['baseline']} | "
            f"{r['cpu_s_per_img']:.3f} | {xc} | {a.get('cos_min', '-')} | {a.get('cos_mean', '-')} | "
            f"{a.get('rank', '-')} |"
        )
    lines += [f"note: {n}" for n in res["notes"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dn2.tools.studies.cpu_engines", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--arch", default="resnet101")
    p.add_argument("--weights", default="none")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=32, help="study frames (>= 16; default 32)")
    p.add_argument("--rounds1", type=int, default=36, help="timed rounds at batch 1 (default 36)")
    p.add_argument("--rounds8", type=int, default=12, help="timed rounds at batch 8 (default 12)")
    p.add_argument("--no-openvino", action="store_true", help="onnxruntime and torch rows only")
    p.add_argument("--no-torch", action="store_true", help="skip the torch-eager rows")
    p.add_argument("--work-dir", required=True, help="frames and exported models (reused)")
    p.add_argument("--json", metavar="OUT")
    a = p.parse_args(argv)
    from dn2.runtime.errors import Dn2Error

    if a.frames < 16 or a.rounds1 < 1 or a.rounds8 < 1:
        p.error(
            f"--frames must be >= 16 and --rounds1/--rounds8 >= 1, found {a.frames}, {a.rounds1}, {a.rounds8}"
        )
    try:
        res = run_study(
            a.arch,
            a.weights,
            Path(a.work_dir),
            a.threads,
            a.input_size,
            a.frames,
            a.rounds1,
            a.rounds8,
            not a.no_openvino,
            not a.no_torch,
        )
    except (Dn2Error, OSError) as exc:
        print(f"cpu_engines: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
