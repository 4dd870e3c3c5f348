"""Where a watch run's results go: one small interface, several sinks at once.

An event sink takes every alert event (``alert_start`` / ``alert_end`` dicts, see
:mod:`dn2.runtime.watch.events`) and must never raise nor block the scoring loop:

    class Sink:
        name: str
        def write(self, event: dict) -> None   # quick; never raises
        def backlog(self) -> int               # events accepted but not delivered yet
        def problems(self) -> list[str]        # what could not be written, for the summary
        def close(self, timeout=None) -> None  # None: the sink's own drain time

Sinks: the JSON-lines file (:class:`~dn2.runtime.watch.events.EventWriter`), MQTT
(:mod:`.mqtt`) and webhooks (:mod:`.webhook`); the network ones sit behind a bounded on-disk
spool (:mod:`.spool`) so a sink that is down loses nothing and is replayed in order when it
comes back. Per-frame scores go to :class:`~.scores.ScoresWriter` (CSV or JSON lines).
MQTT and the status server need ``pip install 'dn2[serve]'``; the rest is the lean runtime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ...errors import Dn2Error


class Sink:
    """The interface (and a do-nothing base)."""

    name = "sink"

    def write(self, event: Dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def backlog(self) -> int:
        return 0

    def problems(self) -> List[str]:
        return []

    def close(self, timeout: Optional[float] = None) -> None:
        pass


def load_sink_config(path: Optional[str]) -> Dict[str, Any]:
    """The sink settings file: ``{"mqtt": {...}, "webhook": {...}, "http": {...}}`` as JSON,
    or the same tables in TOML / YAML (``[mqtt]`` ``username = ...``), read like ``--config``.

    Secrets (MQTT username/password, TLS files, the webhook's headers, the status server's
    token) live here or in the environment, never on the command line.
    """
    if not path:
        return {}
    if Path(path).suffix.lower() in (".toml", ".yaml", ".yml"):
        from ...cliconfig import load_config
        from ...errors import ConfigError

        try:
            data = load_config(path)
        except ConfigError as exc:
            raise Dn2Error(str(exc).replace("--config", "--sink-config", 1)) from None
    else:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise Dn2Error(f"cannot read sink config {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise Dn2Error(
                f"sink config {path}: expected JSON (or .toml / .yaml), found a parse error: {exc}"
            ) from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise Dn2Error(
            f"sink config {path}: expected an object of objects like "
            '{"mqtt": {"username": ...}}, found ' + type(data).__name__
        )
    return data


def setting(config: Dict[str, Any], key: str, env: str, default=None):
    """``config[key]``, else the environment variable ``env``, else ``default``."""
    if config.get(key) is not None:
        return config[key]
    return os.environ.get(env, default)


def default_spool_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "dn2" / "spool"


def build_event_sinks(
    *,
    mqtt: Optional[str] = None,
    webhooks: Optional[List[str]] = None,
    camera_id: str = "camera",
    config: Optional[Dict[str, Any]] = None,
    spool_dir: Optional[str] = None,
    log=lambda msg: None,
) -> List[Sink]:
    """The network sinks asked for, each behind its own on-disk spool."""
    from .spool import SpooledSink

    config = config or {}
    root = Path(spool_dir) if spool_dir else default_spool_dir()
    sinks: List[Sink] = []
    if mqtt:
        from .mqtt import MqttTarget

        target = MqttTarget(mqtt, camera_id, config.get("mqtt") or {}, log=log)
        sinks.append(SpooledSink(target, root, log=log))
    for url in webhooks or []:
        from .webhook import WebhookTarget

        target = WebhookTarget(url, config.get("webhook") or {}, camera_id)
        sinks.append(SpooledSink(target, root, log=log))
    return sinks
