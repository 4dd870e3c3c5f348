"""The status server: a standard-library ThreadingHTTPServer on its own daemon threads.

    /healthz      200 {"status": "ok", ...} while frames flow, 503 otherwise (no token needed)
    /metrics      Prometheus text (prometheus-client)
    /latest.jpg   the newest frame with the overlay
    /stream       the same as MJPEG (multipart/x-mixed-replace), at most ``max_fps``
    /api/state    JSON for the page: score history, threshold, recent alerts, counters
    /snapshots/N  an alert's snapshot (names from the events only)
    /             the live page (one HTML file, inline JS and SVG: works offline)

With a token (``--sink-config`` ``"http": {"token": ...}`` or ``DN2_HTTP_TOKEN``) every path
but /healthz needs ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from ...errors import Dn2Error
from .page import PAGE

_SNAP = re.compile(r"^[A-Za-z0-9_.-]+\.jpg$")


def parse_bind(spec: str):
    """'8080' -> ('127.0.0.1', 8080); 'HOST:PORT' as given (localhost unless told)."""
    host, _, port = str(spec).rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise Dn2Error(
            f"http {spec}: expected [HOST:]PORT, e.g. 127.0.0.1:8080", param="http"
        ) from None
    return host, p


class StatusServer:
    def __init__(
        self,
        live,
        host: str,
        port: int,
        token: Optional[str] = None,
        snapshots: Optional[str] = None,
        max_fps: float = 10.0,
    ):
        self.live, self.token, self.max_fps = live, token or None, max_fps
        self.snapshots = Path(snapshots).resolve() if snapshots else None
        self.closing = threading.Event()
        handler = type("Handler", (_Handler,), {"app": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise Dn2Error(
                f"http {host}:{port}: cannot listen there: {exc.strerror or exc}", param="http"
            ) from exc
        self.httpd.daemon_threads = True
        h, p = self.httpd.server_address[:2]
        self.url = f"http://{h}:{p}/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="dn2-status-server",
            daemon=True,
        )
        self.thread.start()

    def stop(self) -> None:
        if self.closing.is_set():
            return
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    app: StatusServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # no access log on stderr
        pass

    def _send(self, code: int, body: bytes, ctype: str, extra=()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _authorised(self, query) -> bool:
        tok = self.app.token
        if tok is None:
            return True
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        given = given or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), tok.encode())

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802 - http.server API
        u = urlsplit(self.path)
        query = parse_qs(u.query)
        live = self.app.live
        try:
            if u.path == "/healthz":
                st = live.source_state()
                ok = st in ("starting", "running")
                return self._json(
                    {
                        "status": "ok" if ok else st,
                        "source_state": st,
                        "scored": live.scored,
                        "run_id": live.run_id,
                    },
                    200 if ok else 503,
                )
            if not self._authorised(query):
                return self._send(
                    401, b"token required\n", "text/plain", [("WWW-Authenticate", "Bearer")]
                )
            if u.path in ("/", "/index.html"):
                return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            if u.path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                return self._send(200, generate_latest(live.registry), CONTENT_TYPE_LATEST)
            if u.path == "/api/state":
                secs = float((query.get("seconds") or ["300"])[0])
                return self._json(live.state(max(1.0, min(secs, 3600.0))))
            if u.path == "/latest.jpg":
                seq, jpg = live.jpeg()
                if not jpg:
                    return self._send(503, b"no frame yet\n", "text/plain")
                return self._send(200, jpg, "image/jpeg", [("X-Frame-Seq", str(seq))])
            if u.path == "/stream":
                return self._stream()
            if u.path.startswith("/snapshots/"):
                return self._snapshot(u.path[len("/snapshots/") :])
            return self._send(404, b"not found\n", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            return None

    def _snapshot(self, name: str) -> None:
        folder = self.app.snapshots
        path = folder / name if folder is not None and _SNAP.match(name) else None
        if path is None or not path.is_file():
            return self._send(404, b"no such snapshot\n", "text/plain")
        self._send(200, path.read_bytes(), "image/jpeg")

    def _stream(self) -> None:
        app, live = self.app, self.app.live
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=dn2frame")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        last, gap = -1, 1.0 / max(0.1, app.max_fps)
        while not app.closing.is_set():
            if live.seq != last:
                seq, jpg = live.jpeg()
                if jpg and seq != last:
                    self.wfile.write(
                        b"--dn2frame\r\nContent-Type: image/jpeg\r\n"
                        + f"Content-Length: {len(jpg)}\r\n\r\n".encode()
                        + jpg
                        + b"\r\n"
                    )
                    self.wfile.flush()
                    last = seq
            time.sleep(gap)
