"""The simulated device's protocol behaviour (no broker): lifecycle events, idempotency, faults."""

from __future__ import annotations

import json

from edge_agent.messages import DeployCommand, PingCommand, RollbackCommand, dump
from sim.fleet import SimDevice, SimOptions


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object], bool]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, json.loads(payload), retain))

    def events(self) -> list[tuple[str, object]]:
        return [(p["kind"], p.get("cmd_id")) for t, p, _ in self.sent if t.endswith("/events")]  # type: ignore[misc]

    def last_state(self) -> dict[str, object]:
        return next(p for t, p, _ in reversed(self.sent) if t.endswith("/state"))


def _run(dev: SimDevice, until: float, start: float = 0.0) -> None:
    t = start
    while t <= until:
        dev.poll(t)
        t += 0.1


def test_deploy_lifecycle_and_idempotency() -> None:
    wire = Wire()
    dev = SimDevice("sim-1", SimOptions(install_delay_s=0.2, probation_s=0.5), wire)
    dev.on_connect(0.0)
    assert wire.last_state()["online"] is True and wire.sent[0][2] is True  # retained
    cmd = dump(DeployCommand(cmd_id="c1", name="shapes", version="2.0.0", rollout_id="r1"))
    dev.on_command(cmd, 0.0)
    _run(dev, 1.0)
    kinds = [k for k, c in wire.events() if c == "c1"]
    assert kinds == [
        "update.started",
        "update.verified",
        "update.installed",
        "probation.started",
        "probation.passed",
    ]
    state = wire.last_state()
    assert state["active_model"]["version"] == "2.0.0" and state["previous_model"]["version"] == "1.0.0"  # type: ignore[index]
    n = len(wire.events())
    dev.on_command(cmd, 1.1)  # a re-sent deploy: same answers again, no second install
    assert [k for k, _ in wire.events()[n:]] == kinds
    assert dev.active == "shapes@2.0.0"


def test_faulty_version_rolls_back_and_low_confidence_shows_in_telemetry() -> None:
    wire = Wire()
    opts = SimOptions(
        install_delay_s=0.1,
        probation_s=0.3,
        window_s=0.5,
        faulty_versions={"3.0.0"},
        low_confidence_versions={"2.0.0"},
    )
    dev = SimDevice("sim-1", opts, wire)
    dev.on_connect(0.0)
    dev.on_command(dump(DeployCommand(cmd_id="bad", name="shapes", version="3.0.0")), 0.0)
    _run(dev, 1.0)
    assert wire.events()[-1] == ("rollback", "bad") and dev.active == "shapes@1.0.0"
    dev.on_command(dump(DeployCommand(cmd_id="low", name="shapes", version="2.0.0")), 1.0)
    _run(dev, 3.0, 1.0)
    tel = [p for t, p, _ in wire.sent if t.endswith("/telemetry")]
    before = [w for w in tel if w["model"]["version"] == "1.0.0"]  # type: ignore[index]
    after = [w for w in tel if w["model"]["version"] == "2.0.0"]  # type: ignore[index]
    assert before and after
    assert (
        max(float(w["confidence_p50"]) for w in after) < min(float(w["confidence_p50"]) for w in before) - 0.2
    )  # type: ignore[arg-type]
    seqs = [int(w["seq"]) for w in tel]  # type: ignore[call-overload]
    assert seqs == sorted(set(seqs))


def test_rollback_and_ping_answer_their_cmd_id() -> None:
    wire = Wire()
    dev = SimDevice("sim-1", SimOptions(), wire)
    dev.on_connect(0.0)
    dev.on_command(dump(RollbackCommand(cmd_id="rb0")), 0.0)
    assert wire.events()[-1] == ("command.rejected", "rb0")  # nothing to roll back to
    dev.on_command(dump(PingCommand(cmd_id="p1")), 0.0)
    assert wire.events()[-1] == ("pong", "p1")
    dev.on_command(b"{not json", 0.0)
    assert wire.events()[-1][0] == "message.rejected"
