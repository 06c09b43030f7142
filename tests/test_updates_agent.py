"""The updater inside a real Agent: hot swap under load, probation rollback, commands over HTTP TUF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.messages import DeployCommand, Event, RollbackCommand
from edge_agent.runtime import ModelRunner
from edge_agent.spool import Spool
from edge_agent.store import ModelStore
from edge_agent.updates import Updater, attach_to_agent, store_dir
from tests.agent_fakes import ListSource, SpoolDrainingPublisher, agent_config, images
from tests.mqtt import wait_until
from tests.updates_support import World, tuf_http_server


@pytest.fixture
def tuf_server(tmp_path: Path) -> Iterator[tuple[World, str]]:
    w = World(tmp_path)
    w.release("1.0.0")
    with tuf_http_server(w.repo_dir) as (host, port):
        yield w, f"http://{host}:{port}"


def _agent(
    w: World, url: str, n_frames: int, period_s: float = 0.001, **over: Any
) -> tuple[Agent, SpoolDrainingPublisher, Updater]:
    config = agent_config(
        w.tmp / "state",
        **{
            "updates.root_json": str(w.keys / "root.json"),
            "updates.repository_url": url,
            "source.queue_size": 1024,
            **over,
        },
    )
    from edge_agent.updates import daemon_updater

    updater = daemon_updater(config)
    # First install (no agent yet): the store is empty.
    out = updater.deploy("tiny", "1.0.0", cmd_id="boot-install")
    assert out.status == "installed", out
    runner = updater.boot()
    assert isinstance(runner, ModelRunner)
    spool = Spool(config.state_dir / "spool")
    pub = SpoolDrainingPublisher(spool)
    agent = Agent(config, ListSource(images(n_frames), period_s=period_s), pub, runner, spool=spool)
    attach_to_agent(agent, updater)
    return agent, pub, updater


def _events(pub: SpoolDrainingPublisher, kind: str) -> list[Event]:
    return [Event.model_validate(e) for e in pub.events(kind)]


def test_hot_swap_under_load_drops_no_frame(tuf_server: tuple[World, str]) -> None:
    w, url = tuf_server
    w.release("1.1.0")
    n = 4000
    agent, pub, _ = _agent(w, url, n)
    agent.start()
    try:
        wait_until(lambda: agent.frames_total >= 500, 30)
        agent.commands.handle(
            "cmd", DeployCommand(cmd_id="d-1", name="tiny", version="1.1.0").model_dump_json().encode()
        )
        wait_until(lambda: _events(pub, "update.installed"), 60, what="installed event")
        wait_until(lambda: agent.frames_total == n, 60)
    finally:
        agent.stop()
    ev = _events(pub, "update.installed")[-1]
    assert ev.cmd_id == "d-1" and ev.model is not None and ev.model.version == "1.1.0"
    swap = ev.data["swap"]
    assert swap["dropped"] == 0, swap
    assert swap["frames_observed"] >= 2 and swap["median_frame_ms"] > 0
    assert sum(t["dropped"] for t in pub.of("telemetry")) == 0
    kinds = [e["kind"] for e in pub.events() if e.get("cmd_id") == "d-1"]
    assert kinds[:3] == ["update.started", "update.verified", "update.installed"]
    print(f"swap under load: {swap}")


def test_faulty_release_rolls_back_with_evidence_and_is_not_reinstalled(
    tuf_server: tuple[World, str],
) -> None:
    w, url = tuf_server
    w.release("1.1.0", behaviour="nan")
    agent, pub, updater = _agent(w, url, 20000, 0.0005, **{"telemetry.window_s": 0.1})
    agent.start()
    try:
        wait_until(lambda: agent.frames_total >= 100, 30)
        cmd = DeployCommand(cmd_id="d-nan", name="tiny", version="1.1.0", rollout_id="r-9").model_dump_json()
        agent.commands.handle("cmd", cmd.encode())
        agent.commands.handle("cmd", cmd.encode())  # a duplicate delivery changes nothing
        wait_until(lambda: _events(pub, "rollback"), 60, what="rollback event")
        wait_until(lambda: agent.runner.manifest.version == "1.0.0", 10)
    finally:
        agent.stop()
    rb = _events(pub, "rollback")[0]
    assert rb.cmd_id == "d-nan" and rb.rollout_id == "r-9"
    assert rb.data["reason"] == "probation_failed"
    assert rb.data["evidence"]["failed_gates"] == ["max_nonfinite"]
    assert rb.data["evidence"]["nonfinite"] > rb.data["evidence"]["gates"]["max_nonfinite"]
    assert len([e for e in pub.events("update.started") if e.get("cmd_id") == "d-nan"]) == 1
    state = ModelStore(store_dir(w.tmp / "state")).read_state()
    assert state.active is not None and state.active.version == "1.0.0" and "tiny@1.1.0" in state.failed
    again = updater.deploy("tiny", "1.1.0", cmd_id="d-nan-2")
    assert again.status == "rejected" and again.reason == "failed_before"


def test_unconfident_release_fails_its_gates_and_a_rollback_command_is_idempotent(
    tuf_server: tuple[World, str],
) -> None:
    w, url = tuf_server
    w.release("1.1.0", behaviour="unconfident")
    agent, pub, _ = _agent(w, url, 20000, 0.0005, **{"telemetry.window_s": 0.5})
    agent.start()
    try:
        wait_until(lambda: agent.frames_total >= 100, 30)
        agent.commands.handle(
            "cmd", DeployCommand(cmd_id="d-u", name="tiny", version="1.1.0").model_dump_json().encode()
        )
        wait_until(lambda: _events(pub, "rollback"), 60, what="rollback event")
        rb = _events(pub, "rollback")[0]
        assert set(rb.data["evidence"]["failed_gates"]) >= {"min_confidence_p50"}
        assert rb.data["evidence"]["confidence_p50"] < rb.data["evidence"]["gates"]["min_confidence_p50"]
        # Nothing left to roll back to: a rollback command is refused cleanly, once per cmd_id.
        payload = RollbackCommand(cmd_id="rb-1").model_dump_json().encode()
        agent.commands.handle("cmd", payload)
        agent.commands.handle("cmd", payload)
        wait_until(lambda: [e for e in pub.events("update.rejected") if e.get("cmd_id") == "rb-1"], 10)
    finally:
        agent.stop()
    assert len([e for e in pub.events("update.rejected") if e.get("cmd_id") == "rb-1"]) == 1
    assert agent.runner.manifest.version == "1.0.0"
