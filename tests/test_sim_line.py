"""``edge-sim line``: the plan parser, and the player against a real Mosquitto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.line_state import LineReading, parse_line_state
from lineside_common.errors import ConfigError
from sim.line import Step, parse_plan, payload
from tests.mqtt import Collector, Mosquitto

REPO = Path(__file__).resolve().parent.parent


def test_plan_parses_run_changeover_run_and_the_agent_reads_every_step() -> None:
    steps = parse_plan("execute:20, changeover:5 ,Idle:1.5")
    assert steps == [Step("execute", False, 20), Step("stopped", True, 5), Step("idle", False, 1.5)]
    assert [parse_line_state(payload(s)) for s in steps] == [
        LineReading("execute"),
        LineReading("stopped", True),
        LineReading("idle"),
    ]


@pytest.mark.parametrize("plan", ["", "execute", "execute:0", "running:5", "execute:x"])
def test_bad_plans_name_the_problem(plan: str) -> None:
    with pytest.raises(ConfigError):
        parse_plan(plan)


@pytest.mark.integration
def test_player_publishes_the_plan_retained_in_order(mosquitto: Mosquitto) -> None:
    topic = "lineside/v1/devices/robot-9/line"
    out = subprocess.run(
        [sys.executable, "-m", "sim.cli", "line", "--broker", mosquitto.url, "--device", "robot-9",
         "--plan", "execute:0.2,changeover:0.2,execute:0.2"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    with Collector(mosquitto.host, mosquitto.port, topic).start() as col:
        last = col.wait_for(lambda c: c.payloads("/line"), 10)
    assert last[-1] == {"state": "Execute", "changeover": False}  # retained: the last step
    assert out.stdout.splitlines() == [
        "line execute for 0.2s",
        "line stopped (changeover) for 0.2s",
        "line execute for 0.2s",
    ]
