"""Ingest is idempotent by (device, seq), survives a restart (file-backed SQLite, PostgreSQL), and the
MQTT link acknowledges only what it has written."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from edge_agent.messages import DeviceState, Event, Telemetry, Topics, dump
from fleet_server.db import Database, EventRow, TelemetryRow
from fleet_server.ingest import Inbound, Ingest, MqttLink
from tests.mqtt import Mosquitto, wait_until

TOPICS = Topics()


def _tel(d: str, seq: int, frames: int = 10) -> Inbound:
    t = Telemetry(
        device_id=d, seq=seq, window_start=datetime.now(UTC), window_s=1.0, frames=frames, confidence_p50=0.9
    )
    return Inbound(TOPICS.device(d, "telemetry"), dump(t), 0, 1)


def _ev(d: str, seq: int) -> Inbound:
    return Inbound(TOPICS.device(d, "events"), dump(Event(device_id=d, seq=seq, kind="pong")), 0, 1)


def _frames(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(TelemetryRow)) or 0), int(
            s.scalar(select(func.coalesce(func.sum(TelemetryRow.frames), 0))) or 0
        )


def test_same_seq_twice_is_counted_once(db_url: str) -> None:
    db = Database(db_url)
    db.create()
    ing = Ingest(db, TOPICS)
    c = ing.write_batch([_tel("a", 1), _tel("a", 2), _tel("a", 1), _tel("b", 1), _ev("a", 1), _ev("a", 1)])
    assert (c.telemetry_new, c.events_new) == (3, 1)
    c = ing.write_batch([_tel("a", 2), _tel("a", 3), _ev("a", 1), _ev("a", 2)])
    assert (c.telemetry_new, c.telemetry_dup, c.events_new, c.events_dup) == (1, 1, 1, 1)
    assert _frames(db) == (4, 40)
    db.dispose()


def test_survives_restart(db_url: str) -> None:
    db = Database(db_url)
    db.create()
    Ingest(db, TOPICS).write_batch([_tel("a", i) for i in range(1, 6)])
    db.dispose()
    again = Database(db_url)  # a new process: new engine, same storage
    again.create()
    c = Ingest(again, TOPICS).write_batch([_tel("a", i) for i in range(3, 9)])  # redelivered overlap
    assert (c.telemetry_new, c.telemetry_dup) == (3, 3)
    assert _frames(again) == (8, 80)
    again.dispose()


def test_malformed_and_mismatched_messages_are_rejected_not_fatal(db_url: str) -> None:
    db = Database(db_url)
    db.create()
    ing = Ingest(db, TOPICS)
    wrong_topic = Inbound(TOPICS.device("b", "telemetry"), _tel("a", 1).payload, 0, 1)
    c = ing.write_batch(
        [
            Inbound(TOPICS.device("a", "telemetry"), b"{nope", 0, 1),
            wrong_topic,
            Inbound("other/x", b"{}", 0, 1),
            _tel("a", 2),
        ]
    )
    assert (c.rejected, c.telemetry_new) == (3, 1)


def _publisher(broker: Mosquitto) -> mqtt.Client:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pub", protocol=mqtt.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    return pub


@pytest.mark.integration
def test_mqtt_link_persistent_session_loses_nothing_across_restart(
    mosquitto_factory: Callable[..., Mosquitto], db_url: str
) -> None:
    """Messages published while the server is down arrive when it comes back (same client id,
    clean_start=False), and redeliveries are stored once."""
    broker = mosquitto_factory(persistence=True)

    def link() -> tuple[Database, MqttLink]:
        db = Database(db_url)
        db.create()
        lk = MqttLink(broker.url, TOPICS, Ingest(db, TOPICS), client_id="fleet-test", protocol="5")
        lk.start()
        assert lk.connected.wait(10)
        return db, lk

    db, lk = link()
    pub = _publisher(broker)
    state = DeviceState(device_id="a", online=True)
    pub.publish(TOPICS.device("a", "state"), dump(state), qos=1, retain=True)
    for i in range(1, 51):
        pub.publish(TOPICS.device("a", "telemetry"), _tel("a", i).payload, qos=1)
    wait_until(lambda: _frames(db)[0] == 50, 15, what="50 windows stored")
    lk.stop()
    db.dispose()
    for i in range(40, 101):  # 40..50 again (a device's spool replay), then 51..100 while we are down
        pub.publish(TOPICS.device("a", "telemetry"), _tel("a", i).payload, qos=1).wait_for_publish(5)
    db, lk = link()
    wait_until(lambda: _frames(db)[0] == 100, 15, what="the 50 queued windows delivered after the restart")
    assert _frames(db) == (100, 1000)
    assert lk.ingest.totals.telemetry_dup >= 11
    lk.stop()
    pub.loop_stop()
    pub.disconnect()
    db.dispose()


def test_event_rows_keep_cmd_and_rollout(db_url: str) -> None:
    db = Database(db_url)
    db.create()
    e = Event(device_id="a", seq=3, kind="probation.passed", cmd_id="r1-0", rollout_id="r1")
    Ingest(db, TOPICS).write_batch([Inbound(TOPICS.device("a", "events"), dump(e), 0, 1)])
    with db.session() as s:
        row = s.scalars(select(EventRow)).one()
        assert (row.kind, row.cmd_id, row.rollout_id) == ("probation.passed", "r1-0", "r1")


def test_one_controller_at_a_time(db_url: str) -> None:
    """PostgreSQL: an advisory lock elects one controller; it is free again once the holder goes."""
    a, b = Database(db_url), Database(db_url)
    first = a.try_controller_lock()
    assert first is not None
    second = b.try_controller_lock()
    if a.dialect == "postgresql":
        assert second is None
        a.release_controller_lock(first)
        third = b.try_controller_lock()
        assert third is not None
        b.release_controller_lock(third)
    else:
        assert second is not None  # SQLite: one process owns the file
    a.dispose()
    b.dispose()


def test_last_seen_advances_but_is_not_rewritten_per_message(db_url: str) -> None:
    from datetime import timedelta

    from fleet_server.db import DeviceRow

    db = Database(db_url)
    db.create()
    ing = Ingest(db, TOPICS)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def at(seq: int, dt_s: float) -> Inbound:
        return Inbound(_tel("a", seq).topic, _tel("a", seq).payload, 0, 1, t0 + timedelta(seconds=dt_s))

    def last_seen() -> datetime | None:
        with db.session() as s:
            row = s.get(DeviceRow, "a")
            return row.last_seen if row else None

    ing.write_batch([at(1, 0)])
    assert last_seen() == t0  # first sight: the row is created
    ing.write_batch([at(2, 0.5)])
    assert last_seen() == t0  # within TOUCH_EVERY_S: no write
    ing.write_batch([at(3, 5.0)])
    assert last_seen() == t0 + timedelta(seconds=5)
