"""dn2-watch: score a camera / stream / video / folder live and raise debounced alerts.

A thin command line over :func:`dn2.runtime.watch.loop.watch`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import List, Optional

from ..cliargs import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOURCE_LOST,
    EXIT_UNWRITTEN,
    EXIT_USAGE,
    engine_parser,
    library_kwargs,
    new_parser,
    parse_args,
    prog,
    report_error,
    setup_logging,
)
from ..config import WatchConfig
from ..errors import Dn2Error

EPILOG = """\
sources: a camera index (0), a video file, a folder of images (played in name order), an
  rtsp:// / http:// URL, or a GStreamer pipeline ending in appsink (quote it), e.g.
  "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv !
   video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1"
events: JSON lines, alert_start / alert_end per alert (see dn2.runtime.watch.events), each
  with the run's id; --mqtt and --webhook send the same events (QoS 1 / JSON POST), through an
  on-disk spool (--spool) so a sink that is down loses nothing. MQTT credentials and TLS
  files, webhook headers and the status server's token come from --sink-config FILE
  (JSON/TOML/YAML) or the environment (DN2_MQTT_USERNAME, DN2_MQTT_PASSWORD, DN2_MQTT_CA,
  DN2_MQTT_CERT, DN2_MQTT_KEY, DN2_HTTP_TOKEN), never from the command line.
scores: --scores FILE writes one row per score (CSV for .csv, else JSON lines; - for stdout);
  `dn2 plot FILE --events EV -o scores.png` draws it.
stop: Ctrl-C, SIGTERM or SIGHUP stops cleanly: an open alert is closed (reason "stopped"), every
  event is flushed and the events file fsync'ed (exit 0). A second Ctrl-C aborts at once
  (exit 130).
exit 0: the stream ended, --max-frames was reached or a stop was asked for; exit 2: a bad
  option, a bundle or model that is missing, damaged, malformed, unsigned or altered
  (with a trusted key), or a source that cannot open; exit 3: the source failed and could
  not be reopened within --reconnect-attempts, or frames of a damaged video file could not
  be read (the summary counts them; the others keep their true frame numbers); exit 4: the
  run went to its end but some output could not be written (events, snapshots, scores,
  video: the summary says which).
"""


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "watch",
        __doc__.splitlines()[0].split(": ", 1)[1],
        engine_parser(batch=8),
        extra_epilog=EPILOG,
    )
    p.add_argument(
        "bundle",
        help="bundle folder from dn2-fit; with --learn, a dn2 model "
        "(.onnx) or a bundle whose model is used",
    )
    p.add_argument(
        "--source",
        required=True,
        action="append",
        help="camera index, file, folder, URL or GStreamer pipeline; repeat it (or give a "
        ".streams file, one source per line) to watch several cameras with one model",
    )
    p.add_argument("--stride", type=int, default=1, help="score every N-th frame (default 1)")
    p.add_argument(
        "--group",
        type=int,
        metavar="M",
        help="group mode: score the mean-pooled embedding of the last M frames "
        "against the bundle's group bank",
    )
    p.add_argument(
        "--hop",
        type=int,
        help="group mode: frames between scored groups (default 1: a sliding window)",
    )
    p.add_argument("--threshold", type=float, help="override the bundle's (or the group) threshold")
    p.add_argument(
        "--min-consecutive",
        type=int,
        default=3,
        metavar="N",
        help="N scores above the threshold open an alert, N below close it "
        "(default 3). Group mode with --hop 1: one odd frame sits in M "
        "windows, so N > M keeps it from opening an alert on its own",
    )
    p.add_argument(
        "--cooldown",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="quiet time after an alert before the next may open (default 0)",
    )
    p.add_argument(
        "--events", metavar="FILE", help="append alert events here (JSON lines; -: stdout)"
    )
    p.add_argument("--snapshots", metavar="DIR", help="save each alert's peak frame here")
    p.add_argument(
        "--output-video", metavar="FILE", help="write the annotated stream (.mp4 / .avi)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --output-video / --scores file or --learn-bundle folder",
    )
    p.add_argument(
        "--scores", metavar="FILE", help="write every score: CSV (.csv) or JSON lines; - for stdout"
    )
    p.add_argument(
        "--mqtt",
        metavar="URL",
        help="publish events to mqtt://host:port/topic (mqtts:// for TLS; QoS 1; "
        "retained status at TOPIC/CAMERA/status); needs dn2[serve]",
    )
    p.add_argument(
        "--webhook",
        metavar="URL",
        action="append",
        help="POST each event as JSON to URL (retried with backoff; repeatable)",
    )
    p.add_argument(
        "--camera-id",
        metavar="ID",
        action="append",
        help="camera name in events, MQTT topics and payloads, once per source in order "
        "(default: from each --source)",
    )
    p.add_argument(
        "--sink-config",
        metavar="FILE",
        help="settings and secrets for --mqtt / --webhook / --http: JSON, TOML or "
        "YAML with tables mqtt, webhook, http",
    )
    p.add_argument(
        "--spool",
        metavar="DIR",
        help="where undelivered MQTT / webhook events wait (default ~/.local/state/dn2/spool)",
    )
    p.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="status server: /healthz /metrics /latest.jpg /stream and a live page "
        "(host 127.0.0.1 unless given); needs dn2[serve]",
    )
    p.add_argument("--headless", action="store_true", help="no window")
    p.add_argument(
        "--stats-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="print a stats line this often on stderr (0: never; default 10)",
    )
    p.add_argument(
        "--learn",
        metavar="SECONDS|Nf",
        help="fit a bundle from the source's first frames (30 or 30s: seconds; "
        "300f: frames), treated as normal, then watch with it",
    )
    p.add_argument(
        "--learn-bundle",
        metavar="DIR",
        help="keep the learned bundle here (default: a temporary folder)",
    )
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="replay a video file at its own frame rate, as a live camera",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        help="frames buffered between reader and scorer (default 2x batch, at least 4)",
    )
    p.add_argument(
        "--reconnect-max-delay",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest wait between reconnect attempts (backoff doubles from "
        "0.5 s up to this; default 10)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a live source (camera, URL, pipeline) not up at start is retried with "
        "the reconnect backoff for this long (default 30)",
    )
    p.add_argument(
        "--reconnect-attempts",
        type=int,
        metavar="N",
        help="give up after N failed attempts in a row (default: never for live "
        "sources, 3 for files and folders)",
    )
    p.add_argument(
        "--folder-fps",
        type=float,
        default=10.0,
        help="clock of a folder source, for timestamps and cooldown (default 10)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output on stdout: the summary as one JSON object",
    )
    p.add_argument(
        "--trusted-key",
        metavar="PUBKEY",
        help="watch only a bundle signed by this Ed25519 public key (PEM; default "
        "$DN2_TRUSTED_KEY); an unsigned or altered bundle is refused (exit 2)",
    )
    return p


def _install_signals(stop: threading.Event):
    """SIGINT / SIGTERM / SIGHUP (the terminal or the session went away) ask for a clean stop:
    open alerts closed, events flushed; a second SIGINT aborts."""
    previous = {}

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(
            f"{prog('watch')}: {signal.Signals(signum).name} received, stopping "
            "(closing alerts, flushing events)",
            file=sys.stderr,
            flush=True,
        )

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    return previous


def _quiet_opencv() -> None:
    """OpenCV's own warnings (e.g. V4L2 probing) would bury dn2-watch's clearer messages."""
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except Dn2Error as exc:  # --config
        report_error("watch", exc)
        return EXIT_USAGE
    setup_logging(args.quiet, args.verbose)
    from .loop import watch

    _quiet_opencv()
    stop = threading.Event()
    previous = (
        _install_signals(stop) if threading.current_thread() is threading.main_thread() else {}
    )

    log = logging.getLogger("dn2.watch").info

    sinks, live = [], None
    try:
        # every WatchConfig field that is an option, by name (its rules check them)
        config = WatchConfig(**library_kwargs(WatchConfig, args))
        sinks, live = _serving(args, log)
        source = args.source[0] if len(args.source) == 1 else args.source
        summary = watch(args.bundle, source, config, stop=stop, log=log, sinks=sinks, live=live)
    except Dn2Error as exc:
        for s in sinks:
            s.close(0.0)
        report_error("watch", exc, parser)
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error("watch", "aborted")
        return EXIT_INTERRUPTED
    finally:
        if live is not None:
            live.close()
        for sig, h in previous.items():
            signal.signal(sig, h)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(summary.text())
    if (summary.error and not summary.stopped) or summary.lost_frames:
        return EXIT_SOURCE_LOST
    return EXIT_UNWRITTEN if summary.unwritten else EXIT_OK


def camera_id(args) -> str:
    """The box's name in MQTT status topics and payloads: the one --camera-id of one source,
    else a name from --source (several cameras: each event still names its own camera)."""
    from .cameras import safe_id

    if args.camera_id and len(args.camera_id) == 1:
        return args.camera_id[0]
    return safe_id(args.source[0] if len(args.source) == 1 else "dn2")


def _serving(args, log):
    """The network sinks and the status server asked for (built before the model loads, so a
    wrong URL or a missing extra fails at once)."""
    from .sinks import build_event_sinks, load_sink_config

    if not (args.mqtt or args.webhook or args.http):
        return [], None
    config = load_sink_config(args.sink_config)
    sinks = build_event_sinks(
        mqtt=args.mqtt,
        webhooks=args.webhook,
        camera_id=camera_id(args),
        config=config,
        spool_dir=args.spool,
        log=log,
    )
    live = None
    if args.http:
        try:
            from .serve import start_server

            live = start_server(
                args.http, config.get("http") or {}, snapshots=args.snapshots, log=log
            )
        except BaseException:
            for s in sinks:
                s.close(0.0)
            raise
    return sinks, live


if __name__ == "__main__":
    sys.exit(main())
