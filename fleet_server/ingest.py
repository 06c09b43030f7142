"""MQTT ingest: device state, telemetry and events from the broker into the database.

paho's callbacks run on paho's network thread; they cross into the server's world in exactly
one place, ``MqttLink._on_message``, which puts the message on a bounded queue (state and
events on their own queue, served first: a telemetry backlog must not delay a rollout). One ingest
thread takes batches off that queue, writes each batch in one transaction, and only THEN
acknowledges the messages (paho ``manual_ack``): with a persistent session (fixed client id,
``clean_start=False``) a server killed before the write gets the messages again from the
broker, and the (device, seq) unique constraints make the second delivery a no-op. So nothing
is lost and nothing is counted twice across a restart.

A message the database refuses (a constraint, a value it cannot hold) must not block the
messages behind it: the batch is retried message by message and the refused one is stored in
the dead-letter table (``dead_letters``: device, topic, payload, reason, time), counted in
``/metrics`` as ``lineside_ingest_messages_total{kind="dead_lettered"}``, and acknowledged.
A transient failure (the database is down or locked) is told apart by the exception's type and
retried with the whole batch, never dead-lettered.

Several replicas can share ingest through an MQTT 5 shared subscription
(``shared_subscription_group = "fleet"`` → ``$share/fleet/lineside/v1/devices/+/telemetry``):
the broker gives each message to one of them. Each replica needs its own ``mqtt_client_id``.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)

from edge_agent.messages import DeviceState, Event, Telemetry, Topics, parse_message
from fleet_server import registry
from fleet_server.alerts import Alerts
from fleet_server.db import Database, DeadLetterRow, EventRow, TelemetryRow, utcnow
from lineside_common.errors import MessageError, TransportError
from lineside_common.retry import Backoff, retry

log = logging.getLogger(__name__)

TOUCH_EVERY_S = 2.0
ALERT_EVENT_KINDS = frozenset({"drift", "rollback", "camera.lost", "update.failed", "error"})
# A rollback asked for (``fleet rollback``: "requested"; ``edge-agent rollback`` on the robot:
# "operator") alerts like an automatic one: a model was taken out of service either way.
OPERATOR_ROLLBACK_REASONS = frozenset({"requested", "operator"})


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as it left paho's thread."""

    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    received_at: datetime = field(default_factory=utcnow)


@dataclass
class IngestCounts:
    """What one batch did (and, summed, what ingest has done: /metrics)."""

    states: int = 0
    telemetry_new: int = 0
    telemetry_dup: int = 0
    events_new: int = 0
    events_dup: int = 0
    rejected: int = 0
    dead_lettered: int = 0

    def add(self, other: IngestCounts) -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A message that passed its schema, ready to write."""

    item: Inbound
    device_id: str
    msg: DeviceState | Telemetry | Event


def is_transient(exc: BaseException) -> bool:
    """A database failure that is not the message's fault: retry the same batch later.

    Decided by the exception's type, never its text: the connection was lost or invalidated
    (``OperationalError``, ``InterfaceError``, ``connection_invalidated``) — including SQLite's
    "database is locked" and "disk full", which are ``OperationalError`` too.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError)


def poison_reason(exc: BaseException) -> str | None:
    """The dead-letter reason when the database refused the message itself, else None.

    ``IntegrityError`` (a constraint), ``DataError`` (a value the column cannot hold) and a
    ``StatementError`` raised before reaching the driver (a value that cannot be bound, e.g. a
    date that overflows on conversion to UTC). Anything else is not proven to be the message's
    fault and is retried like a transient error (it may be a bug, fixed by a restart).
    """
    if is_transient(exc):
        return None
    if isinstance(exc, IntegrityError):
        return "integrity"
    if isinstance(exc, DataError):
        return "data"
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return "unbindable"
    return None


class Ingest:
    """Parses and writes batches of inbound messages; idempotent by (device, seq)."""

    def __init__(self, db: Database, topics: Topics, alerts: Alerts | None = None) -> None:
        self.db = db
        self.topics = topics
        self.alerts = alerts
        self.totals = IngestCounts()
        self._touched: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def write_batch(self, items: list[Inbound]) -> IngestCounts:
        """Write a batch in one transaction; isolate and dead-letter what the database refuses.

        A transient database error (connection lost, locked, disk full: :func:`is_transient`)
        propagates, and the caller retries the whole batch later (nothing was acked). A refusal
        caused by a message itself (:func:`poison_reason`) makes the batch retried message by
        message: each refused one is stored in the dead-letter table and counted, the rest is
        ingested. Every write is idempotent, so the retries never store anything twice.
        """
        counts = IngestCounts()
        parsed = self._parse(items, counts)
        try:
            alert_events = self._write(parsed, counts)
        except Exception as exc:
            reason = poison_reason(exc)
            if reason is None:
                raise
            log.warning("a batch of %d was refused (%s): writing it message by message", len(parsed), reason)
            counts = IngestCounts(rejected=counts.rejected)
            alert_events = []
            for one in parsed:
                try:
                    alert_events += self._write([one], counts)
                except Exception as one_exc:
                    one_reason = poison_reason(one_exc)
                    if one_reason is None:
                        raise
                    self._dead_letter(one, one_reason, one_exc)
                    counts.dead_lettered += 1
        if self.alerts is not None:
            for e in alert_events:
                self._alert(e)
        with self._lock:
            self.totals.add(counts)
        return counts

    def _parse(self, items: list[Inbound], counts: IngestCounts) -> list[_Parsed]:
        out: list[_Parsed] = []
        for item in items:
            parsed = self.topics.parse(item.topic)
            if parsed is None:
                counts.rejected += 1
                continue
            device_id, channel = parsed
            try:
                msg: DeviceState | Telemetry | Event
                if channel == "state":
                    msg = parse_message(DeviceState, item.payload, item.topic)
                elif channel == "telemetry":
                    msg = parse_message(Telemetry, item.payload, item.topic)
                elif channel == "events":
                    msg = parse_message(Event, item.payload, item.topic)
                else:
                    continue  # cmd/decisions are not ours to ingest
                if msg.device_id != device_id:
                    raise MessageError("device_id differs from the topic", topic=item.topic)
            except MessageError as exc:
                counts.rejected += 1
                log.warning("rejected %s: %s", item.topic, exc)
                continue
            out.append(_Parsed(item, device_id, msg))
        return out

    def _write(self, parsed: list[_Parsed], counts: IngestCounts) -> list[Event]:
        """One transaction; adds to ``counts`` only once it committed. Returns the events to alert on."""
        states: list[tuple[DeviceState, datetime]] = []
        tel: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        alert_events: list[Event] = []
        seen: dict[str, datetime] = {}
        for p in parsed:
            at = p.item.received_at
            if isinstance(p.msg, DeviceState):
                states.append((p.msg, at))
                continue
            if isinstance(p.msg, Telemetry):
                tel.append(_telemetry_row(p.msg, at))
            else:
                events.append(_event_row(p.msg, at))
                if p.msg.kind in ALERT_EVENT_KINDS or (
                    # A swap still deferred at its deadline (at_deadline = "wait") asks for a person.
                    p.msg.kind == "update.deferred" and p.msg.data.get("alert") is True
                ):
                    alert_events.append(p.msg)
            seen[p.device_id] = max(at, seen.get(p.device_id, at))
        done = IngestCounts()
        with self.db.session() as s:
            for st, at in sorted(states, key=lambda x: x[0].since):
                registry.apply_state(s, st, at)
                done.states += 1
            # De-duplicate inside the batch too (one multi-row INSERT may not hold the same key twice);
            # the first delivery wins, as it does across batches.
            tel = _first_per_key(tel)
            events = _first_per_key(events)
            done.telemetry_new = self.db.insert_ignore(s, TelemetryRow.__table__, tel, ["device_id", "seq"])
            done.telemetry_dup = len(tel) - done.telemetry_new
            done.events_new = self.db.insert_ignore(s, EventRow.__table__, events, ["device_id", "seq"])
            done.events_dup = len(events) - done.events_new
            # last_seen: a device new to this process gets its row (created if needed); known ones
            # are refreshed together, at most every TOUCH_EVERY_S (not one UPDATE per message).
            known: list[str] = []
            touched: dict[str, datetime] = {}
            for device_id, at in seen.items():
                last = self._touched.get(device_id)
                if last is None:
                    registry.touch(s, device_id, at)
                elif (at - last).total_seconds() >= TOUCH_EVERY_S:
                    known.append(device_id)
                else:
                    continue
                touched[device_id] = at
            if known:
                registry.touch_many(s, known, max(seen[d] for d in known))
        self._touched.update(touched)  # only once committed: a failed batch is retried in full
        counts.add(done)
        return alert_events

    def _dead_letter(self, p: _Parsed, reason: str, exc: BaseException) -> None:
        """Store a refused message apart (once per topic and payload); a failure here propagates."""
        orig = getattr(exc, "orig", None) or exc
        detail = f"{type(orig).__name__}: {orig}"[:1000].replace("\x00", "\\0")
        row = {
            "device_id": p.device_id,
            "topic": p.item.topic.replace("\x00", "\\0"),
            "payload": p.item.payload,
            "payload_sha256": hashlib.sha256(p.item.payload).hexdigest(),
            "reason": reason,
            "detail": detail,
            "received_at": p.item.received_at,
            "dead_at": utcnow(),
        }
        with self.db.session() as s:
            self.db.insert_ignore(s, DeadLetterRow.__table__, [row], ["topic", "payload_sha256"])
        log.error("dead-lettered %s (%s): %s", p.item.topic, reason, detail)

    def _alert(self, e: Event) -> None:
        assert self.alerts is not None
        reason = str(e.data.get("reason", "")) or e.message
        text = {
            "drift": f"{e.device_id}: confidence drift — {e.message or reason}",
            "rollback": f"{e.device_id} was rolled back by an operator: {e.message or reason}"
            if reason in OPERATOR_ROLLBACK_REASONS
            else f"{e.device_id} rolled back its model: {reason or 'no reason given'}",
            "camera.lost": f"{e.device_id}: camera lost — {e.message}",
            "update.failed": f"{e.device_id}: update failed — {reason}",
            "update.deferred": f"{e.device_id}: model swap still deferred past its deadline — {e.message}",
            "error": f"{e.device_id}: {e.message}",
        }[e.kind]
        self.alerts.raise_alert(
            e.kind,
            text,
            severity="warning"
            if e.kind in ("drift", "camera.lost")
            else "error"
            if e.level == "error"
            else "warning",
            device_id=e.device_id,
            rollout_id=e.rollout_id,
            data={"event": e.model_dump(mode="json")},
            dedup_key=f"event:{e.device_id}:{e.seq}",
        )


def _telemetry_row(t: Telemetry, received_at: datetime) -> dict[str, Any]:
    return {
        "device_id": t.device_id,
        "seq": t.seq,
        "received_at": received_at,
        "window_start": t.window_start,
        "window_s": t.window_s,
        "model_name": t.model.name if t.model else None,
        "model_version": t.model.version if t.model else None,
        "frames": t.frames,
        "errors": t.errors,
        "confidence_p50": t.confidence_p50,
        "confidence_mean": t.confidence_mean,
        "low_confidence": t.low_confidence,
        "latency_ms_p99": t.latency_ms_p99,
        "payload": t.model_dump(mode="json"),
    }


def _first_per_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    firsts: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        firsts.setdefault((r["device_id"], r["seq"]), r)
    return list(firsts.values())


def _event_row(e: Event, received_at: datetime) -> dict[str, Any]:
    return {
        "device_id": e.device_id,
        "seq": e.seq,
        "kind": e.kind,
        "at": e.at,
        "received_at": received_at,
        "cmd_id": e.cmd_id,
        "rollout_id": e.rollout_id,
        "payload": e.model_dump(mode="json"),
    }


class MqttLink:
    """The server's one MQTT client: persistent-session subscriber (manual acks) and command publisher."""

    def __init__(
        self,
        broker_url: str,
        topics: Topics,
        ingest: Ingest,
        *,
        client_id: str = "lineside-fleet",
        protocol: str = "5",
        shared_group: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        queue_max: int = 50_000,
        batch_max: int = 500,
    ) -> None:
        u = urlparse(broker_url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)
        self.topics = topics
        self.ingest = ingest
        self.shared_group = shared_group
        self.batch_max = batch_max
        self.v5 = protocol == "5"
        self._queue: queue.Queue[Inbound] = queue.Queue(maxsize=queue_max)  # telemetry
        self._urgent: queue.Queue[Inbound] = queue.Queue(maxsize=queue_max)  # state and events
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.on_batch: Callable[[IngestCounts], None] | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else False,
            manual_ack=True,
        )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        if username:
            self.client.username_pw_set(username, password)
        self.tls = u.scheme in ("mqtts", "ssl")
        self.ca_file = ca_file
        if self.tls:
            self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._thread = threading.Thread(target=self._ingest_loop, name="fleet-ingest", daemon=True)

    def subscriptions(self) -> list[str]:
        subs = [self.topics.wildcard(c) for c in ("state", "telemetry", "events")]
        if self.shared_group:
            # Retained state goes to every replica (not shared): each keeps its own view of devices.
            subs = [subs[0]] + [f"$share/{self.shared_group}/{t}" for t in subs[1:]]
        return subs

    # -- paho thread -----------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            log.error("broker refused the connection: %s", rc)
            return
        client.subscribe([(t, 1) for t in self.subscriptions()])
        self.connected.set()
        log.info(
            "connected to %s:%d (session present: %s)",
            self.host,
            self.port,
            getattr(flags, "session_present", "?"),
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from the broker (%s); paho reconnects", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        item = Inbound(msg.topic, bytes(msg.payload), int(msg.mid), int(msg.qos))
        # Events and state drive rollouts: they go ahead of a telemetry backlog.
        q = self._queue if msg.topic.endswith("/telemetry") else self._urgent
        # Blocking here (rather than dropping) pushes back on the broker; nothing is acked until
        # written, so a full queue delays delivery but never loses a message.
        while not self._stop.is_set():
            try:
                q.put(item, timeout=1.0)
                self._wake.set()
                return
            except queue.Full:
                log.warning("ingest queue full (%d); waiting", q.maxsize)

    # -- the server's side ----------------------------------------------------------------------

    @property
    def receive_maximum(self) -> int:
        """MQTT 5 Receive Maximum we announce: what one queue holds (at most 65,535)."""
        return max(1, min(65_535, self._queue.maxsize, self._urgent.maxsize))

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + self._urgent.qsize()

    def start(self) -> None:
        if self.tls:
            _tls_preflight(self.host, self.port, self.ca_file)
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 7 * 24 * 3600
            # No more unacknowledged messages in flight to us than a queue holds (we ack only
            # once written), so the broker keeps any backlog and ``_on_message`` never blocks
            # paho's thread. Blocked, that thread could neither send keepalives (the broker then
            # dropped us) nor read the PUBACKs of our commands: at 10,000 devices a rollout's
            # deploys stalled behind a telemetry backlog (BENCHMARKS.md).
            props.ReceiveMaximum = self.receive_maximum
        # connect_async: paho connects (and keeps retrying) on its own thread, so a broker that
        # starts after the server is fine.
        if self.v5:
            self.client.connect_async(self.host, self.port, keepalive=15, clean_start=False, properties=props)
        else:
            self.client.connect_async(self.host, self.port, keepalive=15)
        self.client.loop_start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, not retained. paho queues it while disconnected and sends on reconnect."""
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")

    def _ingest_loop(self) -> None:
        # On stop, leave what is queued: it is not acked, so the broker delivers it again next time.
        while not self._stop.is_set():
            batch: list[Inbound] = []
            for q in (self._urgent, self._queue):  # urgent first
                while len(batch) < self.batch_max:
                    try:
                        batch.append(q.get_nowait())
                    except queue.Empty:
                        break
            if not batch:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            counts = self._write_until_stored(batch)
            if counts is None:
                return
            for item in batch:
                if item.qos > 0:
                    self.client.ack(item.mid, item.qos)
            if self.on_batch is not None:
                self.on_batch(counts)

    def _write_until_stored(self, batch: list[Inbound]) -> IngestCounts | None:
        """write_batch's counts, retried until stored; None once stopped (the batch stays unacked)."""

        def failed(attempt: int, exc: BaseException, delay_s: float) -> None:
            # The database is down or locked (poison messages were dead-lettered inside
            # write_batch): keep the batch (unacked) and retry.
            log.error("writing %d messages failed (attempt %d); retrying", len(batch), attempt, exc_info=exc)

        try:
            return retry(
                lambda: self.ingest.write_batch(batch),
                attempts=1_000_000,  # for ever, in effect: the broker redelivers nothing we do not ack
                backoff=Backoff(0.2, 5.0, jitter=False),
                retry_on=(Exception,),
                sleep=self._stop.wait,
                on_retry=failed,
            )
        except Exception:
            return None  # stopped while waiting to retry (already logged above)


def _tls_preflight(host: str, port: int, ca_file: str | None, timeout_s: float = 5.0) -> None:
    """One TLS handshake before paho's retry loop, which swallows the reason a connection fails:
    a broker certificate that does not verify is logged as an error that says so."""
    ctx = ssl.create_default_context(cafile=ca_file)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        log.error(
            "TLS to the broker %s:%d failed certificate verification: %s (check broker_ca_file: %s)",
            host,
            port,
            exc.verify_message or exc,
            ca_file or "system CAs",
        )
    except (OSError, ssl.SSLError) as exc:
        # Not up yet or refusing: paho keeps retrying; say why once.
        log.warning("broker %s:%d not reachable over TLS yet: %s", host, port, exc)


def wait_connected(link: MqttLink, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if link.connected.wait(0.1):
            return True
    return False
