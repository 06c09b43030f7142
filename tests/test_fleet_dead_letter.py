"""A message the database refuses goes to the dead-letter table; the messages around it are ingested.

A transient failure (the database is unavailable) is retried with the whole batch, never
dead-lettered: the two are told apart by the exception's type. Unit tests run the ingest
component against a real SQLite database; the integration test goes through a real Mosquitto and
a real ``fleet serve`` (and checks that an operator's rollback raises an alert, like an automatic one).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select, text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError

from edge_agent.messages import Event, ModelRef, Telemetry, Topics, dump
from fleet_server import metrics
from fleet_server.db import Database, DeadLetterRow, TelemetryRow
from fleet_server.ingest import Inbound, Ingest, is_transient, poison_reason
from tests.fleet_support import FleetServer, make_keys
from tests.mqtt import Mosquitto, wait_until

TOPICS = Topics()
# Valid JSON, valid for the schema, refused by the database layer: 9999-12-31 23:00 at UTC-5
# overflows when converted to UTC for storage (on SQLite and PostgreSQL alike).
POISON_WINDOW_START = "9999-12-31T23:00:00-05:00"


def _tel(d: str, seq: int) -> bytes:
    return dump(Telemetry(device_id=d, seq=seq, window_start=datetime.now(UTC), window_s=1.0, frames=10))


def _poison(d: str, seq: int) -> bytes:
    return json.dumps(
        {"device_id": d, "seq": seq, "window_start": POISON_WINDOW_START, "window_s": 1.0, "frames": 10}
    ).encode()


def _in(d: str, payload: bytes, channel: str = "telemetry") -> Inbound:
    return Inbound(f"{TOPICS.root}/devices/{d}/{channel}", payload, 0, 1)


def _seqs(db: Database, d: str) -> list[int]:
    with db.session() as s:
        return sorted(s.scalars(select(TelemetryRow.seq).where(TelemetryRow.device_id == d)).all())


def _dead(db: Database) -> list[DeadLetterRow]:
    with db.session() as s:
        return list(s.scalars(select(DeadLetterRow)).all())


def _db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create()
    return db


def test_poison_between_good_messages_is_dead_lettered_and_the_rest_ingested(tmp_path: Path) -> None:
    db = _db(tmp_path)
    ing = Ingest(db, TOPICS)
    poison = _poison("r1", 2)
    batch = [_in("r1", _tel("r1", 1)), _in("r1", poison), _in("r1", _tel("r1", 3))]

    c = ing.write_batch(batch)

    assert (c.telemetry_new, c.dead_lettered, c.rejected) == (2, 1, 0)
    assert _seqs(db, "r1") == [1, 3]
    [row] = _dead(db)
    assert (row.device_id, row.topic, row.payload, row.reason) == (
        "r1",
        "lineside/v1/devices/r1/telemetry",
        poison,
        "unbindable",
    )
    assert row.dead_at is not None and row.received_at is not None
    assert row.detail  # the database layer's words, for a person (never branched on)

    # Redelivered (QoS 1 after a restart before the ack): still one dead letter, nothing twice.
    again = ing.write_batch(batch)
    assert (again.telemetry_new, again.telemetry_dup, again.dead_lettered) == (0, 2, 1)
    assert len(_dead(db)) == 1
    assert _seqs(db, "r1") == [1, 3]

    assert ing.totals.dead_lettered == 2  # the metric counts deliveries refused
    text_ = metrics.render(
        devices_total=1,
        devices_online=0,
        rollouts_by_state={},
        ingest_totals={k: int(v) for k, v in vars(ing.totals).items()},
        alerts_open=0,
        ingest_backlog=0,
        uptime_s=1.0,
    )
    assert 'lineside_ingest_messages_total{kind="dead_lettered"} 2' in text_.splitlines()
    db.dispose()


def test_postgresql_refusals_are_dead_lettered_with_their_reason(postgres_url: str) -> None:
    """On PostgreSQL a value too long for its column is a DataError (SQLite stores it): both kinds of
    refusal are dead-lettered with their own reason, the messages around them ingested."""
    db = Database(postgres_url)
    db.create()
    ing = Ingest(db, TOPICS)
    too_long = dump(Event(device_id="r1", seq=7, kind="pong", cmd_id="c" * 65))  # cmd_id is VARCHAR(64)
    c = ing.write_batch(
        [
            _in("r1", _tel("r1", 1)),
            _in("r1", too_long, "events"),
            _in("r1", _poison("r1", 2)),
            _in("r1", _tel("r1", 3)),
        ]
    )
    assert (c.telemetry_new, c.events_new, c.dead_lettered) == (2, 0, 2)
    assert _seqs(db, "r1") == [1, 3]
    assert sorted((r.reason, r.payload) for r in _dead(db)) == sorted(
        [("data", too_long), ("unbindable", _poison("r1", 2))]
    )
    db.dispose()


def test_transient_database_error_is_retried_not_dead_lettered(tmp_path: Path) -> None:
    """The database failing for its own reasons (here: the table gone, an OperationalError) is
    raised for the caller to retry the same batch; nothing is dead-lettered or counted."""
    db = _db(tmp_path)
    ing = Ingest(db, TOPICS)
    batch = [_in("r1", _tel("r1", 1)), _in("r1", _tel("r1", 2))]
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE telemetry RENAME TO telemetry_away"))
    with pytest.raises(OperationalError):
        ing.write_batch(batch)
    assert _dead(db) == []
    assert ing.totals.telemetry_new == 0 and ing.totals.dead_lettered == 0
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE telemetry_away RENAME TO telemetry"))
    c = ing.write_batch(batch)  # the retry, once the database is back
    assert (c.telemetry_new, c.dead_lettered) == (2, 0)
    assert _seqs(db, "r1") == [1, 2]
    db.dispose()


def test_errors_are_classified_by_type() -> None:
    boom = Exception("driver")
    assert is_transient(OperationalError("INSERT", {}, boom))
    # A lost connection is transient whatever the class the driver chose for it.
    assert is_transient(DataError("INSERT", {}, boom, connection_invalidated=True))
    assert poison_reason(DataError("INSERT", {}, boom, connection_invalidated=True)) is None
    assert poison_reason(OperationalError("INSERT", {}, boom)) is None
    assert poison_reason(IntegrityError("INSERT", {}, boom)) == "integrity"
    assert poison_reason(DataError("INSERT", {}, boom)) == "data"
    assert poison_reason(StatementError("bind", "INSERT", {}, OverflowError("x"))) == "unbindable"
    # Not proven to be the message's fault: retried, not dead-lettered.
    assert poison_reason(RuntimeError("bug")) is None


def _metric(body: str, kind: str) -> int:
    m = re.search(rf'^lineside_ingest_messages_total{{kind="{kind}"}} (\d+)$', body, re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.integration
def test_poison_through_a_real_server_is_dead_lettered_and_operator_rollback_alerts(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    server = FleetServer(tmp_path, mosquitto.url, make_keys(tmp_path)).start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dead-letter-test", protocol=mqtt.MQTTv5)
    try:
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        topic = f"{TOPICS.root}/devices/r1/telemetry"
        for payload in (_tel("r1", 1), _poison("r1", 2), _tel("r1", 3)):
            pub.publish(topic, payload, qos=1).wait_for_publish(10)
        # `edge-agent rollback` on the robot: a `rollback` event whose reason says an operator did it.
        rollback = Event(
            device_id="r1",
            seq=1,
            kind="rollback",
            level="info",
            message="rolled back from shapes@2.0.0 to shapes@1.0.0: edge-agent rollback",
            model=ModelRef(name="shapes", version="1.0.0"),
            data={"reason": "operator", "failed_model": {"name": "shapes", "version": "2.0.0"}},
        )
        pub.publish(f"{TOPICS.root}/devices/r1/events", dump(rollback), qos=1).wait_for_publish(10)
        for payload in (_tel("r1", 4),):
            pub.publish(topic, payload, qos=1).wait_for_publish(10)

        auth = {"Authorization": f"Bearer {server.token}"}

        def seqs() -> list[int]:
            r = httpx.get(f"{server.url}/api/v1/devices/r1", headers=auth, timeout=5)
            return sorted(t["seq"] for t in r.json()["recent_telemetry"]) if r.status_code == 200 else []

        wait_until(lambda: seqs() == [1, 3, 4], 20, what="the good telemetry around the poison ingested")
        body = httpx.get(f"{server.url}/metrics", timeout=5).text
        assert _metric(body, "dead_lettered") == 1
        assert _metric(body, "telemetry_new") == 3

        alerts = wait_until(
            lambda: [
                a
                for a in httpx.get(f"{server.url}/api/v1/alerts", headers=auth, timeout=5).json()
                if a["kind"] == "rollback" and a["device_id"] == "r1"
            ],
            20,
            what="an alert for the operator's rollback",
        )
        assert alerts[0]["data"]["event"]["data"]["reason"] == "operator"
        assert alerts[0]["acknowledged"] is False
    finally:
        pub.loop_stop()
        pub.disconnect()
        server.stop()
    # The dead letter is in the server's database, with its reason.
    db = Database(f"sqlite:///{server.data_dir / 'fleet.db'}")
    try:
        [row] = _dead(db)
        assert (row.device_id, row.reason, row.payload) == ("r1", "unbindable", _poison("r1", 2))
    finally:
        db.dispose()
