"""Real local services for the sink tests: a mosquitto broker on a free 127.0.0.1 port (with
persistence, so it can be killed and restarted) and an HTTP receiver that fails on purpose."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, up: bool = True, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not {'up' if up else 'down'} after {timeout} s")


class Broker:
    def __init__(self, folder: Path, users=None, tls=None):
        self.port, self.folder, self.proc = free_port(), Path(folder), None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.conf = self.folder / "mosquitto.conf"
        auth = "allow_anonymous true\n"
        if users:  # a password file made by mosquitto_passwd: clients must log in
            pw = self.folder / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run(
                    [
                        shutil.which("mosquitto_passwd") or "mosquitto_passwd",
                        "-b",
                        str(pw),
                        user,
                        password,
                    ],
                    check=True,
                    capture_output=True,
                )
            auth = f"allow_anonymous false\npassword_file {pw}\n"
        # as root mosquitto drops to user "mosquitto", who cannot read pytest's 0700 folders
        user = "user root\n" if os.geteuid() == 0 else ""
        if tls:  # (ca, cert, key) files: a TLS-only listener
            auth += f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n{user}{auth}"
            f"persistence true\npersistence_location {self.folder}/\n"
            "autosave_interval 1\n"
        )

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Subscriber:
    """A paho client with a persistent session (QoS 1): sees every message the broker takes,
    across broker restarts."""

    def __init__(self, port: int, topic: str = "#", auth=None):
        import paho.mqtt.client as mqtt

        self.messages: List[tuple] = []
        self.lock = threading.Lock()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{port}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.ready = threading.Event()  # SUBACK seen: from now on nothing published is missed
        c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p=None: self.ready.set()
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 1)
        if auth:
            c.username_pw_set(*auth)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def events(self):
        with self.lock:
            return [m[1] for m in self.messages if m[0].endswith("/events")]

    def wait(self, pred, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class Receiver:
    """An HTTP server on 127.0.0.1 recording POSTed JSON; the first ``fail_first`` requests
    get 503 (a receiver that is up but not ready)."""

    def __init__(self, fail_first: int = 0, port: int = 0):
        self.bodies: List[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                if outer.attempts <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(
                    {**json.loads(data), "_key": self.headers.get("Idempotency-Key")}
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def make_tls(folder: Path):
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI): (ca, cert, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, cak = folder / "ca.pem", folder / "ca.key"
    crt, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=dn2 test CA",
        "-keyout",
        str(cak),
        "-out",
        str(ca),
    )
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(cak),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    return ca, crt, key


def have_mosquitto() -> bool:
    return os.path.exists(MOSQUITTO)
