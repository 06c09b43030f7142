"""MQTT out of the agent: the spool drained in order, retained state with a Last Will, decisions, commands in.

:class:`MqttPublisher` owns one worker thread that drives paho (MQTT 5,
``CallbackAPIVersion.VERSION2``) with ``client.loop()``. Every paho callback
goes through :meth:`MqttPublisher._from_paho`, which only puts a tuple on the
worker's inbox: the one place where paho's world crosses into ours.

Connection handling is ours, not paho's: each attempt uses a fresh client (so
paho never re-sends stale in-flight messages behind our back), attempts back
off exponentially with jitter up to ``reconnect_max_s``, and after every
(re)connect the worker subscribes to ``cmd``, republishes the retained state
and re-sends the spool from its oldest message. QoS 1 may therefore deliver a
message twice; receivers deduplicate by ``seq``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import BrokerConfig
from edge_agent.messages import Topics
from edge_agent.spool import Spool
from lineside_common.retry import Backoff

log = logging.getLogger(__name__)

CommandSink = Callable[[str, bytes], None]


class Publisher(Protocol):
    """What the agent needs from its link to the fleet (the fakes in tests implement this too)."""

    @property
    def connected(self) -> bool: ...

    def start(self, on_command: CommandSink) -> None:
        """Connect in the background; ``on_command(topic, payload)`` for each ``cmd`` message."""

    def notify(self) -> None:
        """New messages are in the spool."""

    def publish_state(self, payload: bytes) -> None:
        """Set the retained state (re-published after every reconnect)."""

    def publish_decision(self, payload: bytes) -> None:
        """Best effort, QoS 0; dropped while disconnected."""

    def stop(self, flush_timeout: float) -> None:
        """Deliver what can be delivered within ``flush_timeout``, then disconnect cleanly."""


class MqttPublisher:
    """The real Publisher: paho-mqtt 2.x, MQTT 5, QoS 1, spool drained in order."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        device_id: str,
        client_id: str,
        spool: Spool,
        will_payload: bytes,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.client_id = client_id
        self.spool = spool
        self.topics = Topics(config.topic_root)
        self._topic = {
            ch: self.topics.device(device_id, ch)
            for ch in ("state", "telemetry", "events", "cmd", "decisions")
        }
        self._will = will_payload
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, rng)
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._client: mqtt.Client | None = None
        self._generation = 0
        self._connected = False
        self._next_attempt = 0.0
        self._inflight: dict[int, int] = {}  # mid -> spool order
        self._cursor = -1
        self._state: bytes | None = None
        self._state_mid: int | None = None
        self._state_acked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_command: CommandSink = lambda topic, payload: None
        self.decisions_dropped = 0
        # Decisions come from the inference thread but are written by the worker only: paho's
        # publish() outside its loop thread writes to the socket itself, and over TLS a write
        # racing the worker's read corrupts the stream ("bad record mac"; tests/test_security_agent.py).
        self._decisions: collections.deque[bytes] = collections.deque()
        self.decisions_max_pending = 1000
        self.connects = 0
        self._extra_subs: dict[str, CommandSink] = {}  # topic -> sink (the line state)

    # -- the Publisher interface (any thread)
    @property
    def connected(self) -> bool:
        return self._connected

    def start(self, on_command: CommandSink) -> None:
        self._on_command = on_command
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._inbox.put(("spooled",))

    def subscribe(self, topic: str, sink: CommandSink) -> None:
        """Also subscribe to ``topic`` (QoS 1, on every connect); its messages go to ``sink(topic, payload)``
        on the worker thread instead of the command sink. Call before :meth:`start`."""
        self._extra_subs[topic] = sink

    def publish_state(self, payload: bytes) -> None:
        self._state_acked.clear()
        self._inbox.put(("state", payload))

    def publish_decision(self, payload: bytes) -> None:
        if self._client is None or not self._connected or len(self._decisions) >= self.decisions_max_pending:
            self.decisions_dropped += 1
            return
        self._decisions.append(payload)  # deque append/popleft are thread-safe

    def stop(self, flush_timeout: float) -> None:
        deadline = time.monotonic() + flush_timeout
        if self._connected:
            self.spool.wait_empty(max(0.0, deadline - time.monotonic()))
            self._state_acked.wait(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._inbox.put(("stop",))
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the one crossing from paho's callbacks into the worker
    def _from_paho(self, generation: int, kind: str, *args: Any) -> None:
        self._inbox.put((kind, generation, *args))

    def _callbacks(self, client: mqtt.Client, generation: int) -> None:
        def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any = None) -> None:
            self._from_paho(generation, "connack", not reason.is_failure, str(reason))

        def on_disconnect(c: Any, u: Any, flags: Any, reason: Any, props: Any = None) -> None:
            self._from_paho(generation, "disconnected", str(reason))

        def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any = None) -> None:
            self._from_paho(generation, "puback", mid)

        def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
            self._from_paho(generation, "message", msg.topic, bytes(msg.payload))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message

    # -- the worker thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                client = self._client
                if client is None:
                    if self.config.url is not None and time.monotonic() >= self._next_attempt:
                        self._attempt()
                    else:
                        self._drain_inbox(timeout=0.1)
                    continue
                rc = client.loop(timeout=0.05)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._client is client:
                    self._lost(f"network loop: {mqtt.error_string(rc)}")
                self._drain_inbox(timeout=0.0)
                self._send_decisions()
                self._pump()
        finally:
            self._shutdown()

    def _drain_inbox(self, timeout: float) -> None:
        try:
            item = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "state":
            self._state = item[1]
            self._state_mid = None
            self._send_state()
            return
        if kind in ("spooled", "stop"):
            return
        generation = item[1]
        if generation != self._generation:
            return  # from a client we already gave up on
        if kind == "connack":
            ok, reason = item[2], item[3]
            if ok:
                self._on_connected()
            else:
                self._lost(f"broker refused the connection: {reason}")
        elif kind == "disconnected":
            if self._client is not None:
                self._lost(f"disconnected: {item[2]}")
        elif kind == "puback":
            mid = item[2]
            if mid == self._state_mid:
                self._state_mid = None
                self._state_acked.set()
            order = self._inflight.pop(mid, None)
            if order is not None:
                self.spool.remove(order)
        elif kind == "message":
            try:
                sink = self._extra_subs.get(item[2], self._on_command)
                sink(item[2], item[3])
            except Exception:  # a bad command handler must not take MQTT down
                log.exception("command sink failed")

    def _attempt(self) -> None:
        self._generation += 1
        generation = self._generation
        v5 = self.config.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        self._callbacks(client, generation)
        client.will_set(self._topic["state"], self._will, qos=1, retain=True)
        password = self.config.resolved_password()
        if self.config.username is not None:
            client.username_pw_set(self.config.username, password)
        if self.config.use_tls:
            tls = self.config.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
            client.tls_insecure_set(tls.insecure)
        client.max_inflight_messages_set(self.config.max_inflight)
        client.max_queued_messages_set(0)
        try:
            if v5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 0
                client.connect(
                    self.config.host,
                    self.config.port,
                    keepalive=self.config.keepalive_s,
                    clean_start=True,
                    properties=props,
                )
            else:
                client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        except (OSError, ValueError) as exc:
            delay = self._backoff.next_delay()
            self._next_attempt = time.monotonic() + delay
            log.info("broker %s unreachable (%s); retry in %.1fs", self.config.url, exc, delay)
            return
        self._client = client

    def _on_connected(self) -> None:
        client = self._client
        if client is None:
            return
        self._connected = True
        self.connects += 1
        self._backoff.reset()
        log.info("connected to %s", self.config.url)
        client.subscribe(self._topic["cmd"], qos=1)
        for topic in self._extra_subs:
            client.subscribe(topic, qos=1)
        self._inflight.clear()
        self._cursor = -1  # re-send the whole spool: anything not PUBACKed may not have arrived
        self._send_state()

    def _send_state(self) -> None:
        client = self._client
        if client is None or not self._connected or self._state is None:
            return
        info = client.publish(self._topic["state"], self._state, qos=1, retain=True)
        self._state_mid = info.mid

    def _pump(self) -> None:
        client = self._client
        if client is None or not self._connected:
            return
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for entry in self.spool.pending(after=self._cursor, limit=room):
            payload = entry.read()
            self._cursor = entry.order
            if payload is None:
                continue  # dropped from the spool meanwhile
            info = client.publish(self._topic[entry.channel], payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(f"publish failed: {mqtt.error_string(info.rc)}")
                return
            self._inflight[info.mid] = entry.order

    def _lost(self, why: str) -> None:
        client, self._client = self._client, None
        was_connected = self._connected
        self._connected = False
        self._inflight.clear()
        self._state_mid = None
        self._generation += 1
        if client is not None:
            with contextlib.suppress(Exception):  # the socket is already gone
                client.disconnect()
        delay = self._backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        if was_connected:
            log.warning("MQTT connection lost (%s); reconnecting in %.1fs", why, delay)
        else:
            log.info("MQTT connect failed (%s); retry in %.1fs", why, delay)

    def _send_decisions(self) -> None:
        """QoS 0, best effort, from the worker thread only; dropped (counted) while disconnected."""
        while self._decisions:
            payload = self._decisions.popleft()
            client = self._client
            if client is None or not self._connected:
                self.decisions_dropped += 1
                continue
            client.publish(self._topic["decisions"], payload, qos=0)

    def _shutdown(self) -> None:
        self._send_decisions()
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            try:
                # A clean DISCONNECT: the broker does not publish the Last Will.
                client.disconnect()
                client.loop(timeout=0.1)
            except Exception:
                pass
