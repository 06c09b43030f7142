"""``edge-agent rollback`` on a robot whose daemon runs: the daemon reports a ``rollback`` event
(reason ``operator``, the model it left), never ``update.installed``; a later local install is an
install again."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.updates import Updater
from tests.conftest import AgentProcess, edge_agent_command
from tests.fault_support import agent_toml, record
from tests.mqtt import Collector, Mosquitto
from tests.updates_support import FakeHost, OrtRunner, World


def _daemon_with_two_models(tmp: Path) -> tuple[World, FakeHost, Updater]:
    w = World(tmp)
    w.release("1.0.0")
    w.release("1.1.0")
    host = FakeHost()
    daemon = w.updater(host)
    daemon.boot()
    for v in ("1.0.0", "1.1.0"):
        assert daemon.install_from_dir(w.repo_dir, name="tiny", version=v).status == "installed"
    host.events.clear()
    return w, host, daemon


def _cli(w: World) -> Updater:
    # What `edge-agent rollback` builds: no host, the same store.
    return Updater(w.store(), w.settings(), load_runner=OrtRunner)


def test_a_local_rollback_is_reported_as_a_rollback_event(tmp_path: Path) -> None:
    w, host, daemon = _daemon_with_two_models(tmp_path)
    out = _cli(w).rollback(reason="edge-agent rollback", code="operator")
    assert out.status == "rolled_back", out
    assert daemon.check_external_change()
    assert "update.installed" not in host.kinds()
    ev = host.last("rollback")
    assert ev["data"]["reason"] == "operator"
    assert ev["data"]["source"] == "cli"
    assert ev["data"]["failed_model"]["version"] == "1.1.0"
    assert ev["model"].version == "1.0.0"
    assert host.runner.manifest.version == "1.0.0"


def test_a_local_install_after_a_local_rollback_is_an_install(tmp_path: Path) -> None:
    w, host, daemon = _daemon_with_two_models(tmp_path)
    _cli(w).rollback(reason="edge-agent rollback", code="operator")
    assert daemon.check_external_change()
    host.events.clear()
    w.release("1.2.0")
    assert _cli(w).install_from_dir(w.repo_dir, name="tiny", version="1.2.0").status == "installed"
    assert daemon.check_external_change()
    assert host.kinds() == ["update.installed"]


def test_a_local_rollback_while_the_daemon_is_stopped_is_reported_once_at_its_start(tmp_path: Path) -> None:
    w, _, _ = _daemon_with_two_models(tmp_path)
    _cli(w).rollback(reason="edge-agent rollback", code="operator")
    host = FakeHost()
    daemon = w.updater(host)
    host.runner = daemon.boot()
    daemon.attach(host)
    ev = host.last("rollback")
    assert ev["data"]["reason"] == "operator" and ev["data"]["failed_model"]["version"] == "1.1.0"
    again = FakeHost()
    w.updater(again).boot()
    assert w.store().read_state().local_change is None
    assert "rollback" not in again.kinds()


@pytest.mark.integration
def test_edge_agent_rollback_against_a_running_daemon_reaches_the_fleet_as_a_rollback(
    tmp_path: Path, mosquitto: Mosquitto, edge_agent_process: Callable[..., AgentProcess]
) -> None:
    # The real thing: `edge-agent run` on a broker, then an operator types `edge-agent rollback`.
    w = World(tmp_path)
    w.release("1.0.0")
    w.release("1.1.0")
    rec = record(tmp_path / "rec", frames=30, seed=5, fps=30)
    cfg = agent_toml(
        tmp_path / "agent.toml", device="rb-1", state=w.state_dir, source=rec, broker=mosquitto.url,
        window_s=0.3, updates={"root_json": str(w.keys / "root.json")},
    )  # fmt: skip
    for v in ("1.0.0", "1.1.0"):
        r = subprocess.run([*edge_agent_command(), "install", str(w.repo_dir), "--model", f"tiny@{v}",
                            "--config", str(cfg)], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
    topic = "lineside/v1/devices/rb-1/"
    with Collector(mosquitto.host, mosquitto.port, f"{topic}#") as c:
        edge_agent_process(cfg)
        c.wait_for(
            lambda c: any(
                (s.get("active_model") or {}).get("version") == "1.1.0" for s in c.payloads("/state")
            ),
            30,
        )
        r = subprocess.run([*edge_agent_command(), "rollback", "--config", str(cfg), "--json"],
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        ev = c.wait_for(lambda c: [e for e in c.payloads("/events") if e["kind"] == "rollback"], 30)[0]
        assert ev["data"]["reason"] == "operator" and ev["data"]["failed_model"]["version"] == "1.1.0"
        assert ev["model"]["version"] == "1.0.0"
        c.wait_for(
            lambda c: (c.payloads("/state")[-1].get("active_model") or {}).get("version") == "1.0.0", 30
        )
        kinds_after = [e["kind"] for e in c.payloads("/events") if e["seq"] > ev["seq"]]
        assert "update.installed" not in kinds_after
