"""Swaps that wait for the line, with real processes: Mosquitto, ``fleet serve``, two ``edge-agent run``.

The line controller publishes each robot's PackML-like state, retained, on
``lineside/v1/devices/{id}/line``. Both robots allow a swap only in Idle (or at a changeover):

- line-1 (deadline 2 s, at_deadline = wait): deferred in Execute, still deferred after the
  deadline (a warning event and a fleet alert) and past the rollout's ``device_timeout_s``
  without failing; swapped at the changeover; a commanded rollback in Execute is not deferred.
- line-2 (deadline 2 s, at_deadline = proceed): swapped at the deadline, and the event says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest

from tests.conftest import AgentProcess
from tests.fault_support import LineRig
from tests.mqtt import Collector, Mosquitto, wait_until

pytestmark = pytest.mark.integration

ROOT = "lineside/v1"
AT_DEADLINE = {"line-1": "wait", "line-2": "proceed"}


class WindowRig(LineRig):
    """LineRig whose agents take their line state from MQTT and defer swaps outside Idle."""

    def config(self, device: str) -> Path:
        path = super().config(device)
        path.write_text(
            path.read_text()
            + '[line]\nsource = "mqtt"\nallowed_states = ["idle"]\ndeadline_s = 2.0\n'
            + f'at_deadline = "{AT_DEADLINE[device]}"\n'
        )
        return path


@pytest.fixture
def rig(
    tmp_path: Path, mosquitto: Mosquitto, edge_agent_process: Callable[..., AgentProcess]
) -> Iterator[WindowRig]:
    line = WindowRig(tmp_path, mosquitto, edge_agent_process, devices=2)
    try:
        for d in line.device_ids:
            set_line(mosquitto, d, "Execute")
        line.start()
        line.release("2.0.0")
        wait_until(
            lambda: all(v == "shapes@1.0.0" for v in line.active().values()) and len(line.active()) == 2,
            60,
            what="2 agents online on 1.0.0",
        )
        line.wait_for_baseline()
        yield line
    finally:
        line.stop()
        print(f"--- fleet serve ---\n{line.server.log()[-4000:]}")


def set_line(broker: Mosquitto, device: str, state: str, changeover: bool = False) -> None:
    payload = json.dumps({"state": state, "changeover": changeover})
    mqtt_publish.single(
        f"{ROOT}/devices/{device}/line", payload, qos=1, retain=True, hostname=broker.host, port=broker.port
    )


def events(col: Collector, device: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in col.payloads(f"{device}/events") if e["kind"] == kind]


def test_swaps_wait_for_the_line_and_the_deadline_choice_happens(
    rig: WindowRig, mosquitto: Mosquitto
) -> None:
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/+/events").start() as col:
        started = time.monotonic()
        rid = rig.api(
            "POST",
            "/rollouts",
            json={
                "model": "shapes@2.0.0",
                "devices": rig.device_ids,
                "stages": "100%",
                "soak": "0s",
                "min_gate_frames": 10,
                "device_timeout_s": 6.0,
            },
        )["id"]

        # line-1: deferred in Execute, then the deadline passes and it keeps waiting, with an alert.
        first = col.wait_for(lambda c: events(c, "line-1", "update.deferred"), 30)[0]
        assert first["data"]["reason"] == "state_not_allowed" and first["data"]["line_state"] == "execute"
        late = col.wait_for(
            lambda c: [
                e for e in events(c, "line-1", "update.deferred") if e["data"]["reason"] == "deadline_passed"
            ],
            10,
        )[0]
        assert late["level"] == "warning" and late["data"]["alert"] is True
        wait_until(
            lambda: any(
                a["kind"] == "update.deferred" and a["device_id"] == "line-1"
                for a in rig.api("GET", "/alerts")
            ),
            10,
            what="a fleet alert for the swap still deferred past its deadline",
        )

        # line-2: at its deadline the configured choice (proceed) swaps, and says so.
        installed = col.wait_for(lambda c: events(c, "line-2", "update.installed"), 30)[0]
        assert installed["data"]["window"]["reason"] == "deadline_proceed"
        assert installed["data"]["window"]["line_state"] == "execute"

        # Past device_timeout_s (6 s) line-1 is still deferred, not failed; the status says so.
        wait_until(
            lambda: rig.rollout_state(rid)["devices"]["line-2"]["status"] == "passed",
            30,
            what="line-2 passed",
        )
        # Waiting out the timeout is the point here: poll the rollout until 7 s have passed.
        r = wait_until(
            lambda: rig.rollout_state(rid) if time.monotonic() - started > 7 else None,
            20,
            what="7 s since the deploy",
        )
        p1 = r["devices"]["line-1"]
        assert p1["status"] == "deferred" and p1["reason"] == "deadline_passed" and r["state"] == "running"
        text = rig.server.cli("rollout", "status", rid).stdout
        assert "line-1: deferred" in text
        assert rig.active()["line-1"] == "shapes@1.0.0"

        # The changeover opens the window: the swap happens, the rollout completes.
        set_line(mosquitto, "line-1", "Stopped", changeover=True)
        installed = col.wait_for(lambda c: events(c, "line-1", "update.installed"), 30)[0]
        assert installed["data"]["window"]["reason"] == "changeover"
        wait_until(lambda: rig.rollout_state(rid)["state"] == "succeeded", 30, what="the rollout succeeds")

        # A commanded rollback is never deferred, whatever the line does.
        set_line(mosquitto, "line-1", "Execute")
        rig.api("POST", "/rollback", json={"devices": ["line-1"], "reason": "test"})
        col.wait_for(lambda c: events(c, "line-1", "rollback"), 30)
        wait_until(lambda: rig.active()["line-1"] == "shapes@1.0.0", 30, what="line-1 back on 1.0.0")


def test_an_agent_stopped_while_deferred_exits_cleanly_and_gets_the_deploy_again(
    rig: WindowRig, mosquitto: Mosquitto
) -> None:
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/line-1/events").start() as col:
        rid = rig.api(
            "POST",
            "/rollouts",
            json={"model": "shapes@2.0.0", "devices": ["line-1"], "stages": "100%", "soak": "0s"},
        )["id"]
        col.wait_for(lambda c: events(c, "line-1", "update.deferred"), 30)
        wait_until(
            lambda: rig.rollout_state(rid)["devices"]["line-1"]["status"] == "deferred", 20, what="deferred"
        )
        # Stopping does not wait for the line, and a stop is not a failed update.
        assert rig.agents["line-1"].stop(timeout=15) == 0
        assert not events(col, "line-1", "update.failed")
        n = len(events(col, "line-1", "update.deferred"))
        rig.start_agent("line-1")
        # The restarted agent lost its staged model; the fleet sends the deploy again and it defers again.
        col.wait_for(lambda c: len(events(c, "line-1", "update.deferred")) > n, 60)
        p = wait_until(
            lambda: (
                (d := rig.rollout_state(rid)["devices"]["line-1"])["status"] == "deferred"
                and d["sends"] == 2
                and d
            ),
            20,
            what="line-1 deferred again after a second deploy",
        )
        assert rig.rollout_state(rid)["state"] == "running" and p["reason"] == "state_not_allowed"
