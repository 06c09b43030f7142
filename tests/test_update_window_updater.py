"""The updater with an update window, in-process (a real store and TUF repository, a fake host):
a staged model waits for the line; a rollback or a local store change cancels it; it never
changes what serves while it waits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.line_state import LineReading, LineStateBoard
from edge_agent.robot_side import WindowGate
from edge_agent.update_window import WindowPolicy
from edge_agent.updates import Outcome, Updater
from tests.mqtt import wait_until
from tests.updates_support import FakeHost, World


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[World, FakeHost, Updater, LineStateBoard]]:
    w = World(tmp_path)
    w.release("1.0.0")
    w.release("2.0.0")
    host = FakeHost()
    up = w.updater(host)
    assert up.install_from_dir(w.repo_dir, name="tiny", version="1.0.0").status == "installed"
    board = LineStateBoard()
    board.set(LineReading("execute"), "test")
    up.window_gate = WindowGate(
        WindowPolicy(allowed_states=frozenset({"idle"})), board, host.emit_event, recheck_s=0.05
    )
    yield w, host, up, board


def _deploy_in_background(w: World, host: FakeHost, up: Updater) -> tuple[threading.Thread, list[Outcome]]:
    out: list[Outcome] = []
    t = threading.Thread(
        target=lambda: out.append(up.install_from_dir(w.repo_dir, name="tiny", version="2.0.0")), daemon=True
    )
    t.start()
    wait_until(lambda: "update.deferred" in host.kinds(), 30, what="the swap deferred")
    return t, out


def _serving(host: FakeHost) -> Any:
    return host.runner.model_ref().version


def test_the_staged_model_waits_then_swaps_when_the_line_goes_idle(rig: Any) -> None:
    w, host, up, board = rig
    t, out = _deploy_in_background(w, host, up)
    assert host.last("update.deferred")["data"]["reason"] == "state_not_allowed"
    assert _serving(host) == "1.0.0" and up.store.read_state().active.version == "1.0.0"
    board.set(LineReading("idle"), "test")
    t.join(30)
    assert out[0].status == "installed" and _serving(host) == "2.0.0"
    assert host.last("update.installed")["data"]["window"]["reason"] == "allowed_state"


def test_a_rollback_is_not_deferred_it_cancels_the_waiting_swap(rig: Any) -> None:
    w, host, up, board = rig
    t, out = _deploy_in_background(w, host, up)
    assert up.rollback(cmd_id="rb-1").status == "cancelled"
    t.join(30)
    assert out[0].status == "failed" and out[0].reason == "cancelled"
    assert host.last("rollback")["data"]["reason"] == "deferred_cancelled"
    assert _serving(host) == "1.0.0" and up.store.read_state().active.version == "1.0.0"
    board.set(LineReading("idle"), "test")  # the window opening later changes nothing
    assert _serving(host) == "1.0.0"


def test_a_local_store_change_cancels_the_waiting_swap(rig: Any) -> None:
    w, host, up, _ = rig
    t, out = _deploy_in_background(w, host, up)
    # What `edge-agent install/rollback` does from another process: state.json changes.
    up._state_mtime = -1
    up.check_external_change()
    t.join(30)
    assert out[0].status == "failed" and out[0].reason == "cancelled" and _serving(host) == "1.0.0"
