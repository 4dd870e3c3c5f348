"""MQTT and webhook sinks against real local services: every event arrives once and in order,
a broker killed mid-run loses nothing (the spool replays), a receiver that fails at first
gets everything, a sink down for a whole run gets its events on the next run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dn2.runtime.config import WatchConfig
from dn2.runtime.errors import Dn2Error
from dn2.runtime.watch.cli import main
from dn2.runtime.watch.loop import watch
from dn2.runtime.watch.sinks import build_event_sinks

from brokers import Broker, Receiver, Subscriber, free_port, have_mosquitto
from sinkscene import STAINS, make_scene

pytest.importorskip("paho.mqtt", reason="pip install 'dn2[serve]'")
needs_broker = pytest.mark.skipif(
    not have_mosquitto(), reason="mosquitto is not installed (apt-get install mosquitto)"
)
KINDS = [k for _ in STAINS for k in ("alert_start", "alert_end")]


@pytest.fixture(scope="module")
def scene(textile_dirs, tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), textile_dirs["nominal"])


def ids(events):
    return [(e["run_id"], e["alert_id"], e["type"]) for e in events]


@needs_broker
def test_mqtt_every_alert_once_in_order_across_a_broker_kill(scene, tmp_path):
    bundle, clip = scene
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    try:
        assert sub.ready.wait(10)
        sinks = build_event_sinks(
            mqtt=f"mqtt://127.0.0.1:{broker.port}/plant",
            camera_id="cam1",
            spool_dir=str(tmp_path / "spool"),
        )
        state = {"killed": False, "restarted": False}

        def on_score(frame, ts, score):  # the scoring thread; the broker dies after alert 1
            state["backlog"] = max(state.get("backlog", 0), sinks[0].backlog())
            if not state["killed"] and sub.events():
                broker.kill()
                state["killed"], state["t"] = True, time.monotonic()
            elif state["killed"] and not state["restarted"] and time.monotonic() - state["t"] > 1.5:
                broker.start()
                state["restarted"] = True

        s = watch(
            str(bundle),
            str(clip),
            WatchConfig(events=str(tmp_path / "ev.jsonl"), min_consecutive=2, realtime=True),
            sinks=sinks,
            on_score=on_score,
        )
        assert state["killed"] and state["restarted"]
        assert state["backlog"] >= 1  # events were produced while the broker was down
        file_events = [
            __import__("json").loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()
        ]
        assert [e["type"] for e in file_events] == KINDS
        assert sub.wait(lambda x: len(x.events()) >= len(KINDS), 20)
        time.sleep(0.5)  # a duplicate would arrive now
        got = sub.events()
        assert ids(got) == ids(file_events)  # once each, in order
        assert all(e["camera_id"] == "cam1" for e in got)
        assert s.sink_backlog == {sinks[0].name: 0} and s.unwritten == []
        status = [m for m in sub.messages if m[0] == "plant/cam1/status"]
        assert status[-1][1]["state"] == "offline"  # published on a clean stop
    finally:
        sub.close()
        broker.stop()


@needs_broker
def test_mqtt_status_retained_and_last_will(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    code = (
        "import sys, time, os, signal\n"
        "from dn2.runtime.watch.sinks.mqtt import MqttTarget\n"
        f"t = MqttTarget('mqtt://127.0.0.1:{broker.port}/plant', 'cam9', {{}})\n"
        "t._connected.wait(10); time.sleep(0.5)\n"
        "print('up', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        late = Subscriber(broker.port, "plant/cam9/status")  # joins after: sees the retained
        assert late.wait(lambda s: any(m[1]["state"] == "online" and m[2] for m in s.messages), 10)
        p.kill()  # dies without a word: the broker publishes the last will
        assert late.wait(lambda s: s.messages[-1][1]["state"] == "offline", 10)
        late.close()
    finally:
        p.kill()
        broker.stop()


def test_webhook_that_fails_first_gets_every_event(scene, tmp_path):
    bundle, clip = scene
    rx = Receiver(fail_first=3)
    try:
        sinks = build_event_sinks(
            webhooks=[rx.url], camera_id="cam2", spool_dir=str(tmp_path / "spool")
        )
        s = watch(str(bundle), str(clip), WatchConfig(min_consecutive=2), sinks=sinks)
        assert rx.attempts == len(KINDS) + 3  # three refused, each retried
        assert [b["type"] for b in rx.bodies] == KINDS
        assert [b["alert_id"] for b in rx.bodies] == [i // 2 + 1 for i in range(len(KINDS))]
        assert all(b["_key"] == f"{s.run_id}:{b['alert_id']}:{b['type']}" for b in rx.bodies)
        assert all(b["camera_id"] == "cam2" for b in rx.bodies)
    finally:
        rx.close()


def test_sink_down_for_a_run_is_replayed_first_on_the_next(scene, tmp_path, capsys):
    bundle, clip = scene
    port = free_port()  # nobody listens yet
    url = f"http://127.0.0.1:{port}/hook"
    argv = [
        str(bundle),
        "--source",
        str(clip),
        "--headless",
        "--min-consecutive",
        "2",
        "--webhook",
        url,
        "--spool",
        str(tmp_path / "spool"),
        "--stats-every",
        "0",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"waiting in the webhook 127.0.0.1:{port}/hook spool: {len(KINDS)} events" in out
    rx = Receiver(port=port)
    try:
        assert main(argv + ["--json"]) == 0
        run2 = __import__("json").loads(capsys.readouterr().out)["run_id"]
        assert len(rx.bodies) == 2 * len(KINDS)
        assert [b["type"] for b in rx.bodies] == KINDS * 2
        assert len({b["run_id"] for b in rx.bodies[: len(KINDS)]}) == 1
        assert {b["run_id"] for b in rx.bodies[len(KINDS) :]} == {run2}  # old run went first
    finally:
        rx.close()


def test_bad_sink_options_are_messages(tmp_path):
    with pytest.raises(Dn2Error, match="credentials do not belong"):
        build_event_sinks(mqtt="mqtt://user:pw@127.0.0.1:1/x", spool_dir=str(tmp_path))
    with pytest.raises(Dn2Error, match="expected mqtt://"):
        build_event_sinks(mqtt="http://127.0.0.1/x", spool_dir=str(tmp_path))
    with pytest.raises(Dn2Error, match="expected an http"):
        build_event_sinks(webhooks=["ftp://x/y"], spool_dir=str(tmp_path))
    a = build_event_sinks(webhooks=["http://127.0.0.1:9/h"], spool_dir=str(tmp_path))
    with pytest.raises(Dn2Error, match="in use by another dn2-watch"):
        build_event_sinks(webhooks=["http://127.0.0.1:9/h"], spool_dir=str(tmp_path))
    a[0].close(0)


@pytest.mark.parametrize(
    "flag,value,module",
    [
        ("--mqtt", "mqtt://127.0.0.1:1/x", "paho"),
        ("--http", "127.0.0.1:0", "prometheus_client"),
    ],
)
def test_missing_serve_extra_names_it(scene, tmp_path, flag, value, module):
    """Without dn2[serve] the lean runtime still watches; asking for a sink says what to
    install (the module is hidden from a real subprocess, as if never installed)."""
    bundle, clip = scene
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from dn2.runtime.watch.cli import main\n"
        f"sys.exit(main([{str(bundle)!r}, '--source', {str(clip)!r}, '--headless', "
        f"{flag!r}, {value!r}, '--spool', {str(tmp_path)!r}]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "pip install 'dn2[serve]'" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_scores_to_stdout_with_webhook_and_http(scene, tmp_path):
    bundle, clip = scene
    rx = Receiver()
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "dn2.runtime.watch.cli",
                str(bundle),
                "--source",
                str(clip),
                "--headless",
                "--min-consecutive",
                "2",
                "--scores",
                "-",
                "--webhook",
                rx.url,
                "--http",
                "127.0.0.1:0",
                "--spool",
                str(tmp_path / "spool"),
                "--stats-every",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        rows = [__import__("json").loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        assert len(rows) == 110 and "status server on http://127.0.0.1:" in p.stderr
        assert [b["type"] for b in rx.bodies] == KINDS
    finally:
        rx.close()


@needs_broker
@pytest.mark.skipif(
    not __import__("shutil").which("mosquitto_passwd"), reason="mosquitto_passwd is not installed"
)
def test_mqtt_credentials_from_config_or_environment(tmp_path, monkeypatch):
    import json

    broker = Broker(tmp_path / "broker", users={"dn2": "pw-1", "sub": "pw-2"}).start()
    sub = Subscriber(broker.port, "plant/#", auth=("sub", "pw-2"))
    url = f"mqtt://127.0.0.1:{broker.port}/plant"
    ev = {"type": "alert_start", "run_id": "r", "alert_id": 1}
    try:
        assert sub.ready.wait(10)
        cfg = tmp_path / "sinks.json"
        cfg.write_text(json.dumps({"mqtt": {"username": "dn2", "password": "pw-1"}}))
        from dn2.runtime.watch.sinks import load_sink_config

        a = build_event_sinks(
            mqtt=url,
            camera_id="c1",
            config=load_sink_config(str(cfg)),
            spool_dir=str(tmp_path / "s1"),
        )[0]
        a.write(ev)
        monkeypatch.setenv("DN2_MQTT_USERNAME", "dn2")
        monkeypatch.setenv("DN2_MQTT_PASSWORD", "pw-1")
        b = build_event_sinks(mqtt=url, camera_id="c2", spool_dir=str(tmp_path / "s2"))[0]
        b.write(ev)
        monkeypatch.setenv("DN2_MQTT_PASSWORD", "wrong")
        c = build_event_sinks(mqtt=url, camera_id="c3", spool_dir=str(tmp_path / "s3"))[0]
        c.write(ev)
        assert sub.wait(lambda s: len(s.events()) >= 2, 15)
        time.sleep(1.0)
        got = {m[0] for m in sub.messages if m[0].endswith("/events")}
        assert got == {"plant/c1/events", "plant/c2/events"}  # the wrong password: refused
        assert c.backlog() == 1  # and its event waits in the spool, not lost
        for s in (a, b, c):
            s.close(0)
    finally:
        sub.close()
        broker.stop()


@needs_broker
@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="no openssl CLI")
def test_mqtt_over_tls_with_the_ca_from_the_config(tmp_path):
    from brokers import make_tls

    ca, crt, key = make_tls(tmp_path / "tls")
    broker = Broker(tmp_path / "broker", tls=(ca, crt, key)).start()
    url = f"mqtts://127.0.0.1:{broker.port}/plant"
    ev = {"type": "alert_start", "run_id": "r", "alert_id": 1}
    try:
        good = build_event_sinks(
            mqtt=url,
            camera_id="t1",
            config={"mqtt": {"ca": str(ca)}},
            spool_dir=str(tmp_path / "s1"),
        )[0]
        good.write(ev)
        bad = build_event_sinks(mqtt=url, camera_id="t2", spool_dir=str(tmp_path / "s2"))[0]
        bad.write(ev)  # the system CAs do not know the test CA: no connection, spooled
        deadline = time.monotonic() + 15
        while good.backlog() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert good.backlog() == 0 and good.delivered == 1
        assert bad.backlog() == 1 and bad.delivered == 0
        good.close(0)
        bad.close(0)
    finally:
        broker.stop()


def test_sink_config_json_or_toml(tmp_path):
    from dn2.runtime.watch.sinks import load_sink_config

    (tmp_path / "s.toml").write_text('[mqtt]\nusername = "dn2"\n[http]\ntoken = "t"\n')
    assert load_sink_config(str(tmp_path / "s.toml")) == {
        "mqtt": {"username": "dn2"},
        "http": {"token": "t"},
    }
    (tmp_path / "s.json").write_text('{"webhook": {"headers": {"Authorization": "Bearer x"}}}')
    assert load_sink_config(str(tmp_path / "s.json"))["webhook"]["headers"]
    (tmp_path / "bad.json").write_text('{"mqtt": "user:pw"}')
    with pytest.raises(Dn2Error, match="expected an object of objects"):
        load_sink_config(str(tmp_path / "bad.json"))
    (tmp_path / "bad.toml").write_text("[mqtt\n")
    with pytest.raises(Dn2Error, match="--sink-config .*not valid TOML"):
        load_sink_config(str(tmp_path / "bad.toml"))


def test_sink_benchmark_runs_both_variants(scene, tmp_path):
    """bench.watch --sinks on the small scene: both variants run, every event is delivered,
    the numbers it prints are there (no speed is asserted)."""
    from dn2.runtime.detector import Detector
    from dn2.tools.bench.watch_sinks import sink_bench, table

    bundle, clip = scene
    r = sink_bench(
        Detector.load(str(bundle)), clip, tmp_path, batch=8, repeats=2, log=lambda m: None
    )
    assert len(r["bare_fps"]) == len(r["sinks_fps"]) == 2 and r["ratio"] > 0
    sinks_runs = [x for x in r["runs"] if x["kind"] == "sinks"]
    assert all(x["alerts"] == len(STAINS) and not x["unwritten"] for x in sinks_runs)
    assert all(all(v == 0 for v in x["backlog"].values()) for x in sinks_runs)
    assert r["hot_path_us"] > 0 and r["cpu_ms_median"]["sinks"] > 0
    assert "sinks / none" in table(r, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))


def test_sigterm_with_a_sink_down_ends_promptly_and_keeps_the_events(scene, tmp_path):
    """SIGTERM mid-run while the webhook is unreachable: the run ends (the spool waits a
    bounded time), the events file pairs every alert, the undelivered events stay spooled."""
    import json
    import signal

    bundle, clip = scene
    port = free_port()
    ev = tmp_path / "ev.jsonl"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dn2.runtime.watch.cli",
            str(bundle),
            "--source",
            str(clip),
            "--headless",
            "--realtime",
            "--events",
            str(ev),
            "--min-consecutive",
            "2",
            "--webhook",
            f"http://127.0.0.1:{port}/h",
            "--spool",
            str(tmp_path / "spool"),
            "--stats-every",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (ev.exists() and ev.read_text()):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    t = time.monotonic()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "Traceback" not in err
    assert time.monotonic() - t < 20  # spool drain 5 s + worker join, not forever
    events = [json.loads(x) for x in ev.read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds.count("alert_start") == kinds.count("alert_end") >= 1
    assert f"spool: {len(events)} events" in out
    queued = (tmp_path / "spool").glob("webhook_*/queue.jsonl")
    assert sum(len(q.read_text().splitlines()) for q in queued) == len(events)
