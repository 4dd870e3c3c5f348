"""MQTT sink target (paho-mqtt, ``pip install 'dn2[serve]'``).

``--mqtt mqtt://host:port/TOPIC`` (``mqtts://`` for TLS) publishes each event with QoS 1 to
``TOPIC/<camera_id>/events`` (with several cameras in one watch, each event goes to its own
camera's ``TOPIC/<camera>/events``), and a retained status to ``TOPIC/<camera_id>/status``:
``{"state": "online", ...}`` on connect, ``"offline"`` on a clean stop, and the same
``offline`` as the last will, so the broker announces a watcher that died. The payload is the
event plus ``camera_id`` and ``event_id`` (``run_id:alert_id:type``, for de-duplication).

Settings come from ``--sink-config`` (``"mqtt"`` object) or the environment, never the
command line: ``username`` / ``DN2_MQTT_USERNAME``, ``password`` / ``DN2_MQTT_PASSWORD``,
``ca`` / ``DN2_MQTT_CA``, ``cert`` / ``DN2_MQTT_CERT``, ``key`` / ``DN2_MQTT_KEY``, and
``client_id``, ``keepalive`` (s). paho reconnects by itself with backoff (1 s doubling to 30 s).

Exactly one publish per event: the spool retries only its head event, and a publish that went
out but was not acknowledged yet is waited on again (paho resends it after a reconnect) rather
than published twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from typing import Any, Dict, Optional, Set, Tuple
from urllib.parse import urlsplit

from ...errors import Dn2Error, MissingExtraError
from . import setting
from .webhook import event_id


class MqttTarget:
    def __init__(
        self,
        url: str,
        camera_id: str,
        config: Dict[str, Any],
        log=lambda msg: None,
        ack_timeout: float = 5.0,
    ):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise MissingExtraError("paho-mqtt", "serve", "dn2-watch --mqtt") from None
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise Dn2Error(
                f"mqtt {url}: expected mqtt://host[:port]/topic or mqtts://...", param="mqtt"
            )
        if u.username or u.password:
            raise Dn2Error(
                "mqtt: credentials do not belong on the command line (they show "
                "in ps and shell history); set DN2_MQTT_USERNAME / "
                "DN2_MQTT_PASSWORD or put them in sink_config",
                params=("mqtt", "sink_config"),
            )
        base = u.path.strip("/") or "dn2"
        if any(c in base for c in "+#"):
            raise Dn2Error(f"mqtt {url}: the topic may not hold MQTT wildcards (+ #)", param="mqtt")
        self.camera_id, self.log, self.ack_timeout = camera_id, log, ack_timeout
        self.base = base
        self.topic = f"{base}/{camera_id}/events"
        self.status_topic = f"{base}/{camera_id}/status"
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        self.name = f"mqtt {u.hostname}:{port}/{self.topic}"
        tag = re.sub(r"[^A-Za-z0-9]+", "_", f"{u.hostname}_{port}_{camera_id}")
        self.key = f"mqtt_{tag}_{hashlib.sha256(url.encode()).hexdigest()[:10]}"
        self._acked: Set[int] = set()
        self._inflight: Optional[Tuple[str, int]] = None  # (event_id, mid) sent, not acked
        self._cond = threading.Condition()
        self._connected = threading.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.get("client_id") or f"dn2-watch-{camera_id}",
            protocol=mqtt.MQTTv311,
        )
        user = setting(config, "username", "DN2_MQTT_USERNAME")
        if user:
            c.username_pw_set(user, setting(config, "password", "DN2_MQTT_PASSWORD"))
        if u.scheme == "mqtts":
            c.tls_set(
                ca_certs=setting(config, "ca", "DN2_MQTT_CA"),
                certfile=setting(config, "cert", "DN2_MQTT_CERT"),
                keyfile=setting(config, "key", "DN2_MQTT_KEY"),
            )
        c.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect, c.on_disconnect, c.on_publish = (
            self._on_connect,
            self._on_disconnect,
            self._on_publish,
        )
        self.client = c
        c.connect_async(u.hostname, port, keepalive=int(config.get("keepalive", 30)))
        c.loop_start()

    def _status(self, state: str) -> str:
        return json.dumps({"state": state, "camera_id": self.camera_id})

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if getattr(reason_code, "is_failure", False):
            self.log(f"{self.name}: broker refused the connection: {reason_code}")
            return
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self._cond:  # only the event in flight (status publishes are not waited on)
            if self._inflight is not None and self._inflight[1] == mid:
                self._acked.add(mid)
                self._cond.notify_all()

    def payload(self, ev: Dict[str, Any]) -> Dict[str, Any]:
        # several cameras in one watch: each event names its camera, and goes to its topic
        return {**ev, "camera_id": ev.get("camera") or self.camera_id, "event_id": event_id(ev)}

    def deliver(self, payload: Dict[str, Any]) -> None:
        eid = payload["event_id"]
        with self._cond:
            if self._inflight is None or self._inflight[0] != eid:
                if not self._connected.is_set():
                    raise ConnectionError("not connected to the broker")
                topic = f"{self.base}/{payload['camera_id']}/events"
                info = self.client.publish(topic, json.dumps(payload), qos=1)
                if info.rc not in (0,):  # paho keeps it queued and resends on reconnect
                    self.log(f"{self.name}: publish rc {info.rc}; paho resends it")
                self._inflight = (eid, info.mid)
            mid = self._inflight[1]
            self._cond.wait_for(lambda: mid in self._acked, timeout=self.ack_timeout)
            if mid not in self._acked:
                raise ConnectionError("no PUBACK from the broker yet")
            self._acked.discard(mid)
            self._inflight = None

    def close(self) -> None:
        c = self.client
        try:
            if self._connected.is_set():
                c.publish(
                    self.status_topic, self._status("offline"), qos=1, retain=True
                ).wait_for_publish(timeout=2.0)
            c.disconnect()
        except (RuntimeError, ValueError, OSError):
            pass
        finally:
            c.loop_stop()
