"""dn2-watch's status server: /healthz, /metrics, /latest.jpg, /stream and a live page.

Needs ``pip install 'dn2[serve]'`` (prometheus-client). :func:`start_server` returns the
:class:`~.live.Live` state the loop feeds (``watch(..., live=...)``); the server runs on its
own threads and reads that state on request, so it never waits on, or slows, the scoring loop.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ...errors import MissingExtraError


def start_server(
    spec: str,
    config: Optional[Dict[str, Any]] = None,
    snapshots: Optional[str] = None,
    log=lambda msg: None,
):
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MissingExtraError("prometheus-client", "serve", "dn2-watch --http") from None
    from .live import Live
    from .server import StatusServer, parse_bind

    config = config or {}
    host, port = parse_bind(spec)
    token = config.get("token") or os.environ.get("DN2_HTTP_TOKEN") or None
    live = Live()
    live.server = StatusServer(
        live,
        host,
        port,
        token=token,
        snapshots=snapshots,
        max_fps=float(config.get("max_fps", 10.0)),
    )
    live.url = live.server.url
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log(
            f"status server listens on {host} without a token: anyone on the network can "
            "see the camera; set DN2_HTTP_TOKEN"
        )
    log(f"status server on {live.url} (live page), {live.url}metrics, {live.url}stream")
    return live
