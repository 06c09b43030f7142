"""``edge-agent rollback`` on a robot whose daemon runs: the daemon reports a ``rollback`` event
(reason ``operator``, the model it left), never ``update.installed``; a later local install is an
install again."""

from __future__ import annotations

from pathlib import Path

from edge_agent.updater import Updater
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
