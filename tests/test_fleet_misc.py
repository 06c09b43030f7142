"""Fleet settings, alert webhook, metrics text, the embedded broker, and the CLI's one-line errors."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from fleet_server.alerts import Alerts, Webhook
from fleet_server.db import Database
from fleet_server.metrics import render
from fleet_server.settings import load_settings
from lineside_common.errors import ConfigError
from tests.fleet_support import REPO, FleetServer, SimFleetProcess, _script, make_keys, wait_for
from tests.mqtt import free_port


def test_settings_file_env_flags_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(
        'data_dir = "/srv/fleet"\nlisten = "0.0.0.0:9000"\n[rollout]\nsoak_s = 30\nstages = "10%,100%"\n'
    )
    env = {"LINESIDE_FLEET_LISTEN": "127.0.0.1:9100", "LINESIDE_FLEET_ROLLOUT__SOAK_S": "45", "OTHER": "x"}
    s = load_settings(cfg, env=env, overrides={"broker_url": "mqtt://broker:1883", "data_dir": None})
    assert s.data_dir == Path("/srv/fleet")  # a None flag does not override
    assert s.listen == "127.0.0.1:9100" and s.rollout.soak_s == 45 and s.rollout.stages == "10%,100%"
    assert s.effective_broker_url == "mqtt://broker:1883"
    assert s.effective_database_url == "sqlite:////srv/fleet/fleet.db"
    d = load_settings()
    assert d.broker_url is None and d.effective_broker_url == "mqtt://127.0.0.1:1883"
    for bad, field in (
        ({"listen": "nope"}, "listen"),
        ({"broker_url": "http://x"}, "broker_url"),
        ({"surprise": 1}, "surprise"),
    ):
        with pytest.raises(ConfigError) as e:
            load_settings(overrides=bad)
        assert e.value.field == field
    cfg.write_text("data_dir = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg)


def test_alerts_dedup_ack_and_webhook_retry(db_url: str) -> None:
    got: list[dict[str, object]] = []
    calls = {"n": 0}
    done = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(503)  # the first attempt fails: retried
        got.append(json.loads(request.content))
        done.set()
        return httpx.Response(204)

    hook = Webhook("http://hooks.test/x", retries=2, backoff_s=0.01, transport=httpx.MockTransport(handler))
    db = Database(db_url)
    db.create()
    alerts = Alerts(db, hook)
    a = alerts.raise_alert("drift", "cam-1 drifted", device_id="cam-1", dedup_key="event:cam-1:5")
    assert a is not None
    assert alerts.raise_alert("drift", "cam-1 drifted", device_id="cam-1", dedup_key="event:cam-1:5") is None
    assert done.wait(5)
    hook.close()
    assert calls["n"] == 2 and got[0]["message"] == "cam-1 drifted" and got[0]["id"] == a["id"]
    assert alerts.count_open() == 1
    assert alerts.acknowledge(int(a["id"]))["acknowledged"] is True  # type: ignore[index]
    assert alerts.count_open() == 0 and alerts.acknowledge(999) is None


def test_metrics_text_format() -> None:
    text = render(
        devices_total=5,
        devices_online=3,
        rollouts_by_state={"running": 1, "halted": 2},
        ingest_totals={"telemetry_new": 10},
        alerts_open=1,
        ingest_backlog=0,
        uptime_s=1.5,
    )
    assert "# TYPE lineside_devices_online gauge\nlineside_devices_online 3\n" in text
    assert 'lineside_rollouts{state="halted"} 2' in text
    assert 'lineside_ingest_messages_total{kind="telemetry_new"} 10' in text


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    base = [*_script("fleet", "fleet_server.cli")]
    cp = subprocess.run(
        [*base, "devices", "list", "--server", f"http://127.0.0.1:{port}", "--token", "t"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert cp.returncode == 1 and cp.stderr.count("\n") == 1 and "cannot reach the fleet server" in cp.stderr
    cp = subprocess.run(
        [*base, "devices", "list", "--server", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert cp.returncode == 1 and "no API token" in cp.stderr


@pytest.mark.integration
def test_embedded_broker_one_machine(tmp_path: Path) -> None:
    """No broker URL: `fleet serve` starts amqtt; simulated devices connect to it and show up."""
    broker_port = free_port()
    keys = make_keys(tmp_path)
    server = FleetServer(tmp_path, "mqtt://unused:1", keys)
    i = server.args.index("--broker")
    server.args[i : i + 2] = ["--embedded-broker-listen", f"127.0.0.1:{broker_port}"]
    sim = SimFleetProcess(tmp_path, f"mqtt://127.0.0.1:{broker_port}", "--devices", "2", "--window", "0.3")
    try:
        server.start()
        sim.start()
        wait_for(
            lambda: sum(d["online"] for d in server.cli_json("devices", "list")) == 2,
            20,
            "2 devices via amqtt",
        )
        err = server.cli("rollout", "status", "nope", check=False)
        assert err.returncode == 1 and err.stderr.strip() == "error: 404: no rollout nope"
        viewer = server.cli("tokens", "create", "--role", "viewer").stdout.strip()
        denied = subprocess.run(
            [
                *_script("fleet", "fleet_server.cli"),
                "tokens",
                "create",
                "--role",
                "admin",
                "--server",
                server.url,
                "--token",
                viewer,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert denied.returncode == 1 and "admin token" in denied.stderr
    finally:
        sim.stop()
        server.stop()
        print(server.log()[-3000:])
