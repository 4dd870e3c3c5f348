"""The watch loop with every sink on vs none, alternating, for ``bench.watch --sinks``.

Each repeat runs ``watch()`` twice on the same MJPG video (stains drawn in so alerts open and
close): once bare (no outputs) and once with the events file, snapshots, ``--scores`` CSV, a
webhook, MQTT (when a mosquitto binary is found: started on a free 127.0.0.1 port) and the
status server with a client that polls the live page's data twice a second and reads
``/stream`` like a viewer. The receivers and clients run in child processes, so their CPU is the
box's, not the loop's process (on a 2-core machine they still share the cores). The order
alternates every repeat; medians are reported, and the ratio sinks / bare of the medians.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Optional

_RECEIVER = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200); self.end_headers()
        def log_message(self, *a): pass
    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(s.server_address[1], flush=True)
    s.serve_forever()
""")

_CLIENT = textwrap.dedent("""
    import sys, threading, time, urllib.request
    url = sys.argv[1]
    def stream():
        while True:
            try:
                with urllib.request.urlopen(url + "stream", timeout=5) as r:
                    while r.read(65536):
                        pass
            except Exception:
                time.sleep(0.2)
    threading.Thread(target=stream, daemon=True).start()
    while True:
        try:
            urllib.request.urlopen(url + "api/state", timeout=5).read()
        except Exception:
            pass
        time.sleep(0.5)
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mosquitto(work: Path):
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if exe is None:
        return None, None
    port = _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    return proc, port


def sink_bench(det, video: Path, work: Path, batch: int, repeats: int = 5, log=print) -> dict:
    from dn2.runtime.config import WatchConfig
    from dn2.runtime.watch.loop import watch
    from dn2.runtime.watch.serve import start_server
    from dn2.runtime.watch.sinks import build_event_sinks

    procs = []
    rx = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
    procs.append(rx)
    hook = f"http://127.0.0.1:{int(rx.stdout.readline())}/hook"
    broker, mport = _mosquitto(work)
    if broker is not None:
        procs.append(broker)
    bare, full, runs = [], [], []
    cpu = {"bare": [], "sinks": []}  # process CPU ms per scored frame (all threads)
    try:
        for r in range(repeats):
            for kind in ("bare", "sinks") if r % 2 == 0 else ("sinks", "bare"):
                if kind == "bare":
                    s = watch(det, str(video), WatchConfig(batch=batch))
                    bare.append(s.fps)
                    cpu["bare"].append(_cpu_ms(s))
                    runs.append({"repeat": r, "kind": kind, "fps": s.fps})
                    continue
                out = work / f"run{r}"
                shutil.rmtree(out, ignore_errors=True)
                sinks = build_event_sinks(
                    mqtt=f"mqtt://127.0.0.1:{mport}/bench" if mport else None,
                    webhooks=[hook],
                    camera_id="bench",
                    spool_dir=str(out / "spool"),
                )
                live = start_server("127.0.0.1:0", {}, snapshots=str(out / "snaps"))
                client = subprocess.Popen([sys.executable, "-c", _CLIENT, live.url])
                time.sleep(0.3)
                try:
                    s = watch(
                        det,
                        str(video),
                        WatchConfig(
                            batch=batch,
                            events=str(out / "ev.jsonl"),
                            snapshots=str(out / "snaps"),
                            scores=str(out / "scores.csv"),
                        ),
                        sinks=sinks,
                        live=live,
                    )
                finally:
                    client.kill()
                    client.wait()
                    live.close()
                full.append(s.fps)
                cpu["sinks"].append(_cpu_ms(s))
                runs.append(
                    {
                        "repeat": r,
                        "kind": kind,
                        "fps": s.fps,
                        "alerts": s.alerts,
                        "events": s.events,
                        "backlog": s.sink_backlog,
                        "unwritten": s.unwritten,
                    }
                )
            log(
                f"repeat {r}: bare {bare[-1]:.1f} f/s, sinks {full[-1]:.1f} f/s "
                f"({runs[-1].get('alerts', runs[-2].get('alerts'))} alerts)"
            )
        hot = hot_path_us(work, video)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    mb, mf = statistics.median(bare), statistics.median(full)
    pairs = [f / b for b, f in zip(bare, full)]
    return {
        "repeats": repeats,
        "bare_fps": bare,
        "sinks_fps": full,
        "bare_median": mb,
        "sinks_median": mf,
        "ratio": mf / mb,
        "pair_ratios": pairs,
        "pair_ratio_median": statistics.median(pairs),
        "runs": runs,
        "hot_path_us": hot,
        "cpu_ms_per_frame": cpu,
        "cpu_ms_median": {k: statistics.median(v) for k, v in cpu.items()},
        "hot_path_share": hot * 1e-6 * mb,
        "mqtt": mport is not None,
        "loadavg_before": None,
    }


def _cpu_ms(s) -> float:
    """Process CPU time (every thread: reader, onnxruntime, sinks, server) per scored frame."""
    return s.cpu_percent / 100.0 * s.elapsed_s / max(1, s.frames_scored) * 1e3


def hot_path_us(work: Path, video: Path, n: int = 3000) -> float:
    """Median microseconds the scoring thread spends per frame in the outputs with the scores
    file and the status server on (no events: those are per alert, not per frame)."""
    import cv2

    from dn2.runtime.watch.outputs import Outputs
    from dn2.runtime.watch.reader import Frame
    from dn2.runtime.watch.serve import start_server
    from dn2.runtime.watch.sinks.scores import ScoresWriter

    cap = cv2.VideoCapture(str(video))
    ok, img = cap.read()
    cap.release()
    live = start_server("127.0.0.1:0", {})
    out = Outputs(
        threshold=1.0,
        mode="frame",
        source_name="bench",
        clock="source",
        scores=ScoresWriter(str(work / "hot.csv"), "bench", 1.0, force=True),
        live=live,
    )
    times = []
    try:
        for i in range(n):
            f = Frame(index=i, image=img, timestamp=i / 25.0, captured=time.monotonic())
            t = time.perf_counter()
            out.score(f, 0.5 + (i % 7) / 10, "normal", None)
            out.frame(f.image, 0.5, "normal", 25.0)
            times.append(time.perf_counter() - t)
    finally:
        out.close()
        live.close()
    return statistics.median(times) * 1e6


def table(r: dict, load_before: Optional[tuple], load_after: Optional[tuple]) -> str:
    f = lambda xs: ", ".join(f"{x:.2f}" if x < 2 else f"{x:.1f}" for x in xs)  # noqa: E731
    lines = [
        f"watch loop, file, every frame; {r['repeats']} alternating repeats; sinks: events "
        f"file, snapshots, scores CSV, webhook, {'MQTT, ' if r['mqtt'] else ''}status server "
        "with a page poller and a /stream viewer",
        "| variant | frames/s per repeat | median |",
        "|---|---|---|",
        f"| no sinks | {f(r['bare_fps'])} | {r['bare_median']:.1f} |",
        f"| all sinks | {f(r['sinks_fps'])} | {r['sinks_median']:.1f} |",
        f"sinks / none: ratio of the medians {r['ratio']:.3f}; per-repeat ratios "
        f"{f(r['pair_ratios'])} (median {r['pair_ratio_median']:.3f})",
        f"process CPU per frame (ms, medians): no sinks {r['cpu_ms_median']['bare']:.2f}, "
        f"all sinks {r['cpu_ms_median']['sinks']:.2f} (ratio "
        f"{r['cpu_ms_median']['sinks'] / r['cpu_ms_median']['bare']:.3f})",
        f"scoring thread's own cost per frame in the outputs (scores CSV + status server): "
        f"{r['hot_path_us']:.1f} us median = {100 * r['hot_path_share']:.2f} % of a frame at "
        f"the median no-sinks rate",
    ]
    if load_before:
        lines.append(
            "load average before / after: "
            + " ".join(f"{x:.2f}" for x in load_before)
            + " / "
            + " ".join(f"{x:.2f}" for x in load_after)
        )
    return "\n".join(lines)


def sinks_run(a, work: Path) -> dict:
    """``bench.watch --sinks``: fit (or load) the bundle, draw the stained scene, run the bench."""
    import cv2
    import numpy as np

    from dn2.runtime.detector import Detector
    from dn2.tools.bench.watch import _textile_paths, default_bundle, make_frames
    from dn2.tools.videoio import write_video

    w, h = (int(v) for v in a.size.lower().split("x"))
    bundle = a.bundle or default_bundle(a.model, work, w, h, threads=a.threads)
    det = Detector.load(bundle, providers=a.providers, threads=a.threads, batch_size=a.batch)
    frames = make_frames(_textile_paths(1000)[-a.frames :], w, h)
    for i in range(len(frames)):  # a stain for 10 frames in every 60: alerts open and close
        if i % 60 >= 50:
            cv2.circle(frames[i], (w // 2, h // 2), min(w, h) // 4, (20, 20, 20), -1)
    video = write_video(work / "bench_sinks.avi", frames, fps=25.0)
    det.embedder.embed_batch(
        np.zeros((1, det.embedder.input_size, det.embedder.input_size, 3), np.uint8)
    )
    before = os.getloadavg()
    r = sink_bench(det, video, work, a.batch, repeats=a.repeats)
    after = os.getloadavg()
    r["loadavg_before"], r["loadavg_after"] = before, after
    print(table(r, before, after))
    return r
