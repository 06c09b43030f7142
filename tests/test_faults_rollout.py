"""Faults during a rollout with real processes: Mosquitto, ``fleet serve`` and three ``edge-agent run``.

- The broker stops in the middle of a rollout and comes back: the agents keep classifying (the
  line runs on its verified model), spool telemetry and events, deliver them after reconnecting;
  the rollout completes; the server holds every telemetry and event seq of every device, gap-free.
- The fleet server is SIGKILLed mid-rollout and restarted: the rollout continues from its stored
  state and completes; nothing is stored twice or lost.

The broker is stopped with SIGTERM (it saves its persistent sessions): a SIGKILLed Mosquitto loses
the QoS 1 messages it had acknowledged but not yet written to disk — a property of the broker
(use a clustered broker where that matters), not something the agents can repair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import AgentProcess
from tests.fault_support import LineRig, persistent_broker
from tests.mqtt import Mosquitto, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    edge_agent_process: Callable[..., AgentProcess],
) -> Iterator[LineRig]:
    broker = persistent_broker(mosquitto_factory)
    line = LineRig(tmp_path, broker, edge_agent_process)
    line.start()
    try:
        line.release("2.0.0")
        wait_until(
            lambda: (
                len(line.devices()) == 3
                and all(
                    d.get("online") and d["active_model"] == "shapes@1.0.0" for d in line.devices().values()
                )
            ),
            60,
            what="3 agents online on 1.0.0",
        )
        # Pre-rollout telemetry for the quality gates' baseline.
        wait_until(lambda: all(_frames(line)[d] >= 60 for d in line.device_ids), 60, what="baseline frames")
        yield line
    finally:
        line.stop()
        print(f"--- fleet serve ---\n{line.server.log()[-4000:]}")


def _frames(line: LineRig) -> dict[str, int]:
    return {d: int(line.status(d).get("frames", 0)) for d in line.device_ids}


def test_broker_restarted_during_a_rollout(rig: LineRig) -> None:
    line = rig
    rid = line.rollout("2.0.0", soak="2s")
    wait_until(
        lambda: line.rollout_state(rid)["devices"]["line-1"]["status"] not in ("waiting", "pending"),
        60,
        what="the canary got its deploy",
    )
    line.broker.stop()
    before = _frames(line)
    # The line keeps running while the broker is away: frames keep being classified, and spooled.
    wait_until(
        lambda: all(_frames(line)[d] >= before[d] + 60 for d in line.device_ids),
        60,
        what="agents classifying with the broker down",
    )
    wait_until(
        lambda: all(line.status(d).get("spool_depth", 0) > 0 for d in line.device_ids), 30, what="spooling"
    )
    assert all(a.running for a in line.agents.values())
    line.broker.start()
    wait_until(lambda: line.rollout_state(rid)["state"] != "running", 180, what="rollout finished")
    st = line.rollout_state(rid)
    assert st["state"] == "succeeded", st
    wait_until(lambda: set(line.active().values()) == {"shapes@2.0.0"}, 30, what="all on 2.0.0")
    line.assert_nothing_lost()


def test_fleet_server_killed_mid_rollout(rig: LineRig) -> None:
    line = rig
    rid = line.rollout("2.0.0", soak="3s")
    wait_until(
        lambda: line.rollout_state(rid)["devices"]["line-1"]["status"] == "passed", 90, what="canary passed"
    )
    line.server.kill()
    line.server.start()
    wait_until(
        lambda: line.rollout_state(rid)["state"] != "running", 180, what="rollout finished after restart"
    )
    st = line.rollout_state(rid)
    assert st["state"] == "succeeded", st
    wait_until(lambda: set(line.active().values()) == {"shapes@2.0.0"}, 30, what="all on 2.0.0")
    # Each device installed 2.0.0 exactly once, however often the restarted server re-sent.
    for d in line.device_ids:
        installs = line.api("GET", f"/devices/{d}/events", params={"kind": "update.installed", "limit": 100})
        versions = [
            e["model"]["version"] for e in installs if e.get("model") and not e["data"].get("already_active")
        ]
        assert versions.count("2.0.0") == 1, (d, installs)
    line.assert_nothing_lost()
