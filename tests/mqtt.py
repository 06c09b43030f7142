"""Test helpers for MQTT: a real Mosquitto on a free port, and a collecting subscriber.

Used by the ``mosquitto`` fixtures in tests/conftest.py and by any test that
needs to watch what the agent (or the fleet server) publishes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# One home for each (sim/): re-exported here for the tests that import them from tests.mqtt.
from sim.procs import find_mosquitto, free_port
from sim.rig import wait_until

__all__ = ["Collector", "Mosquitto", "Received", "find_mosquitto", "free_port", "wait_port", "wait_until"]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Poll until ``host:port`` accepts TCP connections; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s ({last})")


class Mosquitto:
    """A mosquitto process on 127.0.0.1 with a generated config; ``stop``/``start`` keep the port.

    ``persistence=True`` keeps sessions (and queued QoS 1 messages) across
    ``stop()``/``start()``, which outage tests need so that a persistent
    subscriber misses nothing while the broker is down.
    """

    def __init__(self, binary: str, workdir: Path, *, persistence: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # Mosquitto's default queue (1000) silently drops QoS 1 bursts; tests replay bursts.
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to the `mosquitto` user, which cannot write its
            # persistence file under pytest's 0700 temp directories: stay who we are.
            lines.append("user root")
        if persistence:
            lines += [
                "persistence true",
                f"persistence_location {workdir}/",
                "persistence_file mosquitto.db",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) on the same port and wait until it accepts connections."""
        if self.running:
            return
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path), "-v"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                wait_port(self.host, self.port, timeout=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop (SIGTERM, then SIGKILL); with persistence, the session database is saved."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass(frozen=True)
class Received:
    """One received message."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """A paho subscriber that collects every message, per topic, into thread-safe lists.

    ``persistent=True`` uses a fixed client id and a non-clean MQTT 5 session
    (expiry 1 h), so it keeps receiving QoS 1 messages queued while it (or a
    persistence-enabled broker) was away. It resubscribes on every connect.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: list[str] | str = "#",
        *,
        qos: int = 1,
        persistent: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._connected = threading.Event()
        self.persistent = persistent
        cid = client_id or f"test-collector-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)

    # -- paho callbacks (paho's thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        for t in self.topics:
            client.subscribe(t, qos=self.qos)
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        rec = Received(msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos), time.monotonic())
        with self._lock:
            self._messages.append(rec)

    # -- lifecycle
    def start(self, timeout: float = 10.0) -> Collector:
        props = None
        clean = True
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            clean = False
        self.client.connect(self.host, self.port, keepalive=5, clean_start=clean, properties=props)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"collector could not connect to {self.host}:{self.port}")
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries
    def messages(self, topic_suffix: str | None = None) -> list[Received]:
        """A snapshot of what arrived, optionally only topics ending with ``topic_suffix``."""
        with self._lock:
            msgs = list(self._messages)
        if topic_suffix is None:
            return msgs
        return [m for m in msgs if m.topic.endswith(topic_suffix)]

    def payloads(self, topic_suffix: str) -> list[Any]:
        """JSON payloads of the messages whose topic ends with ``topic_suffix``."""
        return [m.json() for m in self.messages(topic_suffix)]

    def wait_for(
        self, predicate: Callable[[Collector], Any], timeout: float = 10.0, *, interval: float = 0.05
    ) -> Any:
        """Poll ``predicate(self)`` until it returns something truthy; return it, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"condition not met within {timeout}s; got {len(self.messages())} messages"
                )
            time.sleep(interval)
