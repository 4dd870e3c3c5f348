"""Webhook sink target: each event as one JSON POST (standard library only).

Settings (``--sink-config`` ``"webhook"`` object): ``headers`` (e.g. an Authorization header:
secrets stay out of the command line), ``timeout`` seconds (default 5). A response other than
2xx, a refused connection or a timeout is a failed delivery: the spool retries it with backoff.
Each POST carries ``Idempotency-Key: <run_id>:<alert_id>:<type>`` so a receiver can drop the
rare duplicate (a 2xx that was lost on the way back).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from typing import Any, Dict
from urllib.parse import urlsplit

from ...errors import Dn2Error


def event_id(ev: Dict[str, Any]) -> str:
    """``run_id:alert_id:type``; with several cameras (alert ids count per camera)
    ``run_id:camera:alert_id:type``."""
    cam = f"{ev['camera']}:" if ev.get("camera") else ""
    return f"{ev.get('run_id')}:{cam}{ev.get('alert_id')}:{ev.get('type')}"


class WebhookTarget:
    def __init__(self, url: str, config: Dict[str, Any], camera_id: str = ""):
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise Dn2Error(f"webhook {url}: expected an http:// or https:// URL", param="webhook")
        if u.username or u.password:
            raise Dn2Error(
                "webhook: credentials do not belong on the command line; put an "
                "Authorization header in sink_config (webhook.headers)",
                params=("webhook", "sink_config"),
            )
        self.url, self.camera_id = url, camera_id
        self.headers = {"Content-Type": "application/json", **(config.get("headers") or {})}
        self.timeout = float(config.get("timeout", 5.0))
        self.name = f"webhook {u.hostname}:{u.port or ''}{u.path}"
        tag = re.sub(r"[^A-Za-z0-9]+", "_", f"{u.hostname}_{u.port or ''}")
        self.key = f"webhook_{tag}_{hashlib.sha256(url.encode()).hexdigest()[:10]}"

    def payload(self, ev: Dict[str, Any]) -> Dict[str, Any]:
        return {**ev, "camera_id": ev.get("camera") or self.camera_id, "event_id": event_id(ev)}

    def deliver(self, payload: Dict[str, Any]) -> None:
        req = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            method="POST",
            headers={**self.headers, "Idempotency-Key": payload["event_id"]},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(str(getattr(exc, "reason", exc))) from None

    def close(self) -> None:
        pass
