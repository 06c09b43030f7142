"""Contract: the simulated fleet (sim/fleet.py) speaks the agent's protocol, both ways.

The scale benchmarks and the fleet tests trust ``edge-sim fleet`` to stand in for real agents, so
what it sends must be what the server ingests from agents, and what the server sends it must be
what agents accept:

- every message kind a ``SimDevice`` publishes (retained state and its Last Will, telemetry, every
  event it answers a command with, truth) parses with the agent's own message models the way the
  server's ingest parses it (``parse_message`` by channel, device id matching the topic);
- every command the server sends, built by the server's own code (``RolloutController`` turning a
  rollout's actions into commands; an operator's ``fleet rollback``), is parsed and dispatched by
  the agent's ``CommandDispatcher`` and answered by the simulator, never refused as a bad message.

No broker: the simulator's publish function and the controller's publisher are the seams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from edge_agent.commands import HANDLED_TYPES, CommandDispatcher
from edge_agent.messages import (
    CaptureCommand,
    DeviceState,
    Event,
    SamplingOverride,
    Telemetry,
    Topics,
    dump,
    parse_message,
)
from fleet_server.controller import RolloutController
from fleet_server.rollouts import (
    Policy,
    Rollout,
    SendDeploy,
    SendRollback,
    SendShadowDeploy,
    SendStopShadow,
    parse_stages,
)
from sim.fleet import SimDevice, SimOptions

TOPICS = Topics()
# What the server's ingest parses each channel with (fleet_server/ingest.py, Ingest._parse).
INGESTED: dict[str, type[BaseModel]] = {"state": DeviceState, "telemetry": Telemetry, "events": Event}


@dataclass
class Wire:
    """Everything published, in order: (topic, payload, retain)."""

    sent: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, payload, retain))

    def events(self) -> list[dict[str, Any]]:
        return [Event.model_validate_json(p).model_dump() for t, p, _ in self.sent if t.endswith("/events")]


def dump_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def parse_type(payload: bytes) -> str:
    t: str = json.loads(payload)["type"]
    return t


def _ingest(topic: str, payload: bytes) -> BaseModel:
    """Parse one message exactly as the server's ingest does; MessageError if it would reject it."""
    parsed = TOPICS.parse(topic)
    assert parsed is not None, f"not a device topic: {topic}"
    device_id, channel = parsed
    msg = parse_message(INGESTED[channel], payload, topic)
    assert getattr(msg, "device_id", None) == device_id, (topic, msg)
    return msg


def _sim(**opts: Any) -> tuple[SimDevice, Wire]:
    wire = Wire()
    options = SimOptions(install_delay_s=0.1, probation_s=0.5, window_s=1.0, **opts)
    return SimDevice("sim-1", options, wire), wire


def _run(dev: SimDevice, start: float, seconds: float) -> float:
    """Advance the device's clock in small steps, running its timers and telemetry windows."""
    now = start
    while now < start + seconds:
        now += 0.1
        dev.poll(now)
    return now


def test_every_message_the_simulator_sends_is_one_the_server_ingests() -> None:
    dev, wire = _sim(
        truth_share=0.5,
        faulty_versions={"2.0.1"},
        reject_versions={"9.9.9"},
        low_confidence_versions={"2.0.1"},
    )
    now = 1_000_000.0
    dev.on_connect(now)
    now = _run(dev, now, 2.5)  # telemetry windows with truth
    for version, cmd_id in (("2.0.0", "c-good"), ("2.0.1", "c-faulty"), ("9.9.9", "c-reject")):
        deploy = {
            "type": "deploy",
            "cmd_id": cmd_id,
            "name": "shapes",
            "version": version,
            "rollout_id": "r1",
        }
        dev.on_command(dump_json(deploy), now)
        now = _run(dev, now, 1.5)  # installed, probation, verdict
    dev.on_command(
        dump_json({"type": "deploy", "cmd_id": "c-again", "name": "shapes", "version": "3.0.0"}), now
    )
    now = _run(dev, now, 0.2)  # installed, on probation: the rollback below has a previous model
    dev.on_command(dump_json({"type": "rollback", "cmd_id": "c-rb", "reason": "operator"}), now)
    dev.on_command(dump_json({"type": "ping", "cmd_id": "c-ping"}), now)
    dev.on_command(dump_json({"type": "capture", "cmd_id": "c-cap", "count": 3}), now)
    dev.on_command(b"{not json", now)
    wire(TOPICS.device("sim-1", "state"), dump(dev.state(online=False, now=now)), True)  # its Last Will

    channels: dict[str, int] = {}
    for topic, payload, retain in wire.sent:
        msg = _ingest(topic, payload)
        channels[type(msg).__name__] = channels.get(type(msg).__name__, 0) + 1
        assert retain is isinstance(msg, DeviceState), (topic, retain)  # only the state is retained
    assert channels.keys() == {"DeviceState", "Telemetry", "Event"}

    kinds = {e["kind"] for e in wire.events()}
    # Every kind the simulator can send was sent (and so parsed above): the test covers its protocol.
    assert kinds == {
        "truth.joined", "update.started", "update.verified", "update.installed", "probation.started",
        "probation.passed", "rollback", "update.rejected", "pong", "command.rejected", "message.rejected",
    }  # fmt: skip
    answered = {e["cmd_id"] for e in wire.events() if e["cmd_id"]}
    assert answered == {"c-good", "c-faulty", "c-reject", "c-again", "c-rb", "c-ping", "c-cap"}


@dataclass
class _Publisher:
    """The controller's MQTT publisher, recording instead of sending."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *_: Any, **__: Any) -> None:
        self.sent.append((topic, payload))


def _server_commands() -> list[tuple[str, bytes]]:
    """The commands the fleet server sends, each built by its own code."""
    pub = _Publisher()
    ctl = RolloutController(None, pub, None, TOPICS, clock=lambda: 1_000_000.0)  # type: ignore[arg-type]
    sampling = SamplingOverride(random_share=0.1, per_hour=30)
    r = Rollout.create(
        "r1", "shapes", "2.0.0", ["sim-1"], parse_stages("100%"), Policy(sampling=sampling), 1_000_000.0
    )
    ctl._execute(
        r,
        [
            SendShadowDeploy("sim-1", "c-shadow"),
            SendStopShadow("sim-1", "c-stop"),
            SendDeploy("sim-1", "c-deploy"),
            SendRollback("sim-1", "c-rollback", "probation failed on the canary " * 30),  # over 500 chars
        ],
    )
    ctl.rollback_devices(["sim-1"], "operator rollback")
    # The capture endpoint (fleet_server/api_samples.py) builds its command inline, like this.
    cap = CaptureCommand(cmd_id="c-capture", count=5, low_confidence=True, issued_at=datetime.now(UTC))
    pub.publish(TOPICS.device("sim-1", "cmd"), dump(cap))
    return pub.sent


def test_every_command_the_server_sends_is_accepted_by_the_agent_and_the_simulator() -> None:
    sent = _server_commands()
    types = [parse_type(p) for _, p in sent]
    assert sorted(types) == ["capture", "deploy", "deploy", "rollback", "rollback", "stop_shadow"]

    # The agent: parsed and handed to the handler for its type; nothing refused.
    handled: list[Any] = []
    emitted: list[tuple[str, dict[str, Any]]] = []
    agent = CommandDispatcher(lambda kind, **kw: emitted.append((kind, kw)))
    for t in HANDLED_TYPES:
        agent.set_handler(t, handled.append)
    for topic, payload in sent:
        assert topic == TOPICS.device("sim-1", "cmd")
        agent.handle(topic, payload)
    assert emitted == []  # no message.rejected, no command.rejected
    assert [c.type for c in handled] == types
    shadow, deploy = (c for c in handled if c.type == "deploy")
    assert shadow.mode == "shadow" and deploy.mode == "install" and deploy.sampling is not None

    # The simulator: parsed (no message.rejected) and answered with an event carrying the cmd_id.
    dev, wire = _sim()
    now = 1_000_000.0
    dev.on_connect(now)
    for _, payload in sent:
        dev.on_command(payload, now)
        now = _run(dev, now, 1.0)
    events = wire.events()
    assert not [e for e in events if e["kind"] == "message.rejected"], events
    first = {}
    for e in events:
        if e["cmd_id"]:
            first.setdefault(e["cmd_id"], e)
    operator_rb = next(c.cmd_id for c in handled if c.cmd_id.startswith("m"))
    assert {k: e["kind"] for k, e in first.items()} == {
        "c-shadow": "command.rejected",  # no shadow runner: refused, never installed
        "c-stop": "command.rejected",  # by its cmd_id, as an agent without that handler does
        "c-deploy": "update.started",
        "c-rollback": "rollback",
        operator_rb: "command.rejected",  # nothing left to roll back to after c-rollback
        "c-capture": "command.rejected",
    }
    unsupported = {k for k, e in first.items() if "not supported" in e["message"]}
    assert unsupported == {"c-stop", "c-capture", "c-shadow"}, first


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type": "deploy", "cmd_id": "x", "name": "shapes", "version": "1.0.0", "unknown": 1}',
        b'{"type": "reboot", "cmd_id": "x"}',
        b"[]",
    ],
)
def test_what_the_agent_refuses_the_simulator_refuses_too(payload: bytes) -> None:
    """The contract holds on the other side as well: no command the agent refuses is acted on by
    the simulator (it would make a benchmark succeed where a real fleet fails)."""
    emitted: list[str] = []
    agent = CommandDispatcher(lambda kind, **kw: emitted.append(kind))
    for t in HANDLED_TYPES:
        agent.set_handler(t, lambda cmd: pytest.fail(f"the agent acted on {cmd}"))
    agent.handle(TOPICS.device("sim-1", "cmd"), payload)
    assert emitted and emitted[0] in ("message.rejected", "command.rejected")
    dev, wire = _sim()
    dev.on_connect(1_000_000.0)
    dev.on_command(payload, 1_000_000.0)
    _run(dev, 1_000_000.0, 1.0)
    kinds = [e["kind"] for e in wire.events()]
    assert kinds and set(kinds) <= {"message.rejected", "command.rejected"}, kinds


def test_the_simulator_refuses_a_shadow_deploy_and_keeps_serving() -> None:
    """An agent runs a ``mode = "shadow"`` deploy beside its serving model and never serves it;
    the simulator has no shadow runner, so it refuses the command (never installs it)."""
    dev, wire = _sim()
    dev.on_connect(1_000_000.0)
    shadow = {"type": "deploy", "cmd_id": "s", "name": "shapes", "version": "2.0.0", "mode": "shadow"}
    dev.on_command(dump_json(shadow), 1_000_000.0)
    _run(dev, 1_000_000.0, 2.0)
    assert dev.active == "shapes@1.0.0"
    refused = [e for e in wire.events() if e["kind"] == "command.rejected"]
    assert [(e["cmd_id"], e["data"]["reason"]) for e in refused] == [("s", "unsupported")]
    assert not any(e["kind"].startswith("update.") for e in wire.events())
