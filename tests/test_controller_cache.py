"""The rollout controller's persistence shortcuts (BENCHMARKS.md section 13) keep its behaviour.

It keeps each rollout parsed between ticks, re-reads it only when the row's ``updated_at``
moved, writes it only when it changed, and reads the events' payloads only where a reason is
used. These tests drive two controllers on one database (two replicas) and a failing publisher
against SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from edge_agent.messages import Topics
from fleet_server import controller as controller_mod
from fleet_server.alerts import Alerts
from fleet_server.controller import RolloutController
from fleet_server.db import Database, DeviceRow, EventRow, RolloutRow
from fleet_server.rollouts import DeviceStatus, Policy, Rollout, SendDeploy, parse_stages
from lineside_common.errors import TransportError

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Sent:
    """A publisher that records commands, or refuses them while ``fail`` is set."""

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.fail = False

    def publish(self, topic: str, payload: bytes) -> None:
        if self.fail:
            raise TransportError("broker gone")
        self.topics.append(topic)


@pytest.fixture
def db(db_url: str) -> Any:
    d = Database(db_url)
    d.create()
    yield d
    d.dispose()


def _controller(db: Database, clock: Clock, sent: Sent | None = None) -> RolloutController:
    return RolloutController(db, sent or Sent(), Alerts(db), Topics(), clock=clock)


def _create(ctl: RolloutController, devices: list[str], **policy_kw: Any) -> str:
    policy = Policy(soak_s=0, resend_after_s=30, max_sends=5, **policy_kw)
    rid: str = ctl.create("shapes", "2.0.0", devices, parse_stages("100%"), policy)["id"]
    return rid


def _stored(db: Database, rid: str) -> dict[str, Any]:
    with db.session() as s:
        doc: dict[str, Any] = s.scalar(select(RolloutRow.doc).where(RolloutRow.id == rid))
        return doc


def test_a_change_by_another_replica_is_seen_even_at_the_same_instant(db: Database) -> None:
    clock, sent = Clock(), Sent()
    leader = _controller(db, clock, sent)
    other = _controller(db, clock)  # another replica's API, same clock reading
    rid = _create(leader, ["d0", "d1"])
    assert len(sent.topics) == 2
    leader.tick_all()  # caches the rollout
    assert other.pause(rid)["state"] == "paused"  # the clock has not moved
    clock.now += 31  # past resend_after_s: a running rollout would re-send both deploys
    leader.tick_all()
    assert len(sent.topics) == 2, "the leader acted on its stale copy of a paused rollout"
    assert _stored(db, rid)["state"] == "paused", "the leader overwrote the other replica's pause"
    other.resume(rid)
    leader.tick_all()
    assert len(sent.topics) == 4  # running again: both deploys re-sent once


def test_a_failed_step_forgets_its_copy_and_the_next_one_redoes_it(db: Database) -> None:
    clock, sent = Clock(), Sent()
    ctl = _controller(db, clock, sent)
    sent.fail = True
    with pytest.raises(TransportError):
        _create(ctl, ["d0", "d1"])  # the first step fails after the state machine marked both sent
    (rid,) = [r["id"] for r in ctl.list_rollouts()]
    assert {d["status"] for d in _stored(db, rid)["devices"].values()} == {"pending"}
    sent.fail = False
    ctl.tick_all()  # same instant: only a copy re-read from the database sends them now
    assert len(sent.topics) == 2
    assert {d["status"] for d in _stored(db, rid)["devices"].values()} == {"sent"}


def test_events_drive_the_rollout_and_a_failure_keeps_its_reason(db: Database) -> None:
    clock = Clock()
    ctl = _controller(db, clock)
    rid = _create(ctl, ["d0", "d1"], max_failure_rate=0.5)
    cmd = {d: p["cmd_id"] for d, p in _stored(db, rid)["devices"].items()}
    seq = itertools.count(1)
    at = datetime.fromtimestamp(T0 + 1, UTC)

    def event(device: str, kind: str, data: dict[str, Any] | None = None) -> EventRow:
        body = {"device_id": device, "kind": kind, "cmd_id": cmd[device], "data": data or {}}
        return EventRow(
            device_id=device,
            seq=next(seq),
            kind=kind,
            at=at,
            received_at=at,
            cmd_id=cmd[device],
            rollout_id=rid,
            payload=body,
        )

    with db.session() as s:
        for kind in ("update.started", "update.installed", "probation.started", "probation.passed"):
            s.add(event("d0", kind))
        s.add(event("d1", "update.started"))
        s.add(event("d1", "update.failed", {"reason": "disk full"}))
    clock.now += 2
    ctl.tick_all()
    devices = ctl.get(rid)["devices"]
    assert devices["d0"]["status"] == "passed"
    assert (devices["d1"]["status"], devices["d1"]["reason"]) == ("failed", "disk full")


@pytest.mark.parametrize("in_max", [500, 1])
def test_state_confirms_devices_whether_asked_by_id_or_by_version(
    db: Database, monkeypatch: pytest.MonkeyPatch, in_max: int
) -> None:
    monkeypatch.setattr(controller_mod, "STATE_QUERY_IN_MAX", in_max)
    clock = Clock()
    ctl = _controller(db, clock)
    rid = _create(ctl, ["d0", "d1", "d2"])
    with db.session() as s:
        for device, version, probation, since in (
            ("d0", "2.0.0", False, T0 + 5),  # running it, out of probation: passed
            ("d1", "2.0.0", True, T0 + 5),  # still in probation
            ("d2", "2.0.0", False, T0 - 5),  # a state from before the deploy
            ("x9", "2.0.0", False, T0 + 5),  # not in the rollout
        ):
            s.add(
                DeviceRow(
                    device_id=device,
                    online=True,
                    active_name="shapes",
                    active_version=version,
                    probation=probation,
                    state_since=datetime.fromtimestamp(since, UTC),
                    tags=[],
                    state={},
                )
            )
    clock.now += 6
    ctl.tick_all()
    statuses = {d: p["status"] for d, p in ctl.get(rid)["devices"].items()}
    assert statuses == {"d0": "passed", "d1": "sent", "d2": "sent"}


def test_pacing_sends_first_deploys_only_while_few_are_unanswered_and_times_each_from_its_send() -> None:
    policy = Policy(soak_s=0, resend_after_s=30, max_sends=2, device_timeout_s=900)
    r = Rollout.create("r1", "shapes", "2.0.0", [f"d{i}" for i in range(5)], parse_stages("100%"), policy, T0)
    first = [a.device_id for a in r.tick(T0, max_unanswered=2) if isinstance(a, SendDeploy)]
    assert first == ["d0", "d1"]
    assert r.tick(T0 + 1, max_unanswered=2) == []  # both still unanswered: nobody else yet
    r.on_event("d0", "update.started", T0 + 2, cmd_id=r.devices["d0"].cmd_id)
    assert [a.device_id for a in r.tick(T0 + 2, max_unanswered=2)] == ["d2"]
    # d3 waits its turn for longer than resend_after_s x max_sends: that is not held against it
    sent_at = T0 + 100
    r.on_event("d1", "update.started", sent_at, cmd_id=r.devices["d1"].cmd_id)
    r.on_event("d2", "update.started", sent_at, cmd_id=r.devices["d2"].cmd_id)
    assert [a.device_id for a in r.tick(sent_at, max_unanswered=2)] == ["d3", "d4"]
    d3 = r.devices["d3"]
    assert (d3.status, d3.first_sent_at, d3.sends) == (DeviceStatus.SENT, sent_at, 1)
    r.tick(sent_at + 30, max_unanswered=2)
    assert (d3.status, d3.sends) == (DeviceStatus.SENT, 2)  # re-sent once, 30 s after its own send
    r.tick(sent_at + 60, max_unanswered=2)
    assert (d3.status, d3.reason) == (DeviceStatus.FAILED, "no answer after 2 deploy commands")
    # without a limit every pending device goes at once, as before
    r2 = Rollout.create(
        "r2", "shapes", "2.0.0", [f"d{i}" for i in range(5)], parse_stages("100%"), policy, T0
    )
    assert len(r2.tick(T0)) == 5
