"""Security test helpers: a test PKI, Mosquitto started from deploy/mosquitto/lineside.conf, TLS clients.

``SecureBroker`` runs the config we ship (paths, ports and log destination rewritten to a
temporary directory, nothing else), so the tests prove that file, not a test-only one.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet_server.enroll import CertificateAuthority, Enrollment, enroll, write_private, write_public
from tests.mqtt import Mosquitto, Received, free_port

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONF = REPO / "deploy" / "mosquitto" / "lineside.conf"
ROOT = "lineside/v1"


@dataclass(frozen=True)
class Pki:
    """A CA (the fleet's MQTT CA) and a broker certificate for 127.0.0.1/localhost it signed."""

    ca: CertificateAuthority
    ca_file: Path
    server_cert: Path
    server_key: Path


def make_pki(directory: Path, *, name: str = "Lineside test CA") -> Pki:
    """A fresh CA and server certificate under ``directory`` (generated with `cryptography`)."""
    ca = CertificateAuthority.load_or_create(directory / "ca", common_name=name)
    server = ca.issue("broker", server_hosts=["127.0.0.1", "localhost"])
    cert = write_public(directory / "server.crt", server.cert_pem)
    key = write_private(directory / "server.key", server.key_pem)
    return Pki(ca, directory / "ca" / "ca.crt", cert, key)


def render_config(text: str, *, workdir: Path, port: int, cert_port: int, run_as: str | None = None) -> str:
    """The shipped config with its paths under ``workdir``, listeners on 127.0.0.1, log to a file.

    ``run_as``: started as root, Mosquitto drops to this user (``user`` option), as Debian's
    service does with ``mosquitto``; None keeps the test's own user."""
    text = text.replace("/etc/mosquitto/lineside/", f"{workdir}/")
    text = text.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {workdir}/")
    text = re.sub(r"^listener 8883\b.*$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^listener 8884\b.*$", f"listener {cert_port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^log_dest syslog$", "log_dest stdout", text, flags=re.M)
    text = re.sub(r"^autosave_interval .*$", "autosave_interval 1", text, flags=re.M)
    if run_as is not None:
        text += f"\nuser {run_as}\n"
    elif os.geteuid() == 0:
        # Started as root, mosquitto drops to the `mosquitto` user, which cannot read the 0600
        # files a test (as root) writes; in production they are chown'd to mosquitto.
        text += "\nuser root\n"
    return text


class SecureBroker(Mosquitto):
    """Mosquitto with deploy/mosquitto/lineside.conf: TLS listener (passwords) + mutual-TLS listener."""

    def __init__(self, binary: str, workdir: Path, pki: Pki, *, run_as: str | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)  # the broker's directory, as docs/security-broker.md lays it out
        super().__init__(binary, workdir, persistence=True)
        self.pki = pki
        self.cert_port = free_port()
        self.password_file = workdir / "passwd"
        self.acl_file = workdir / "acl"
        # The shipped config's file names: ca.crt, server.crt, server.key, passwd, acl.
        write_public(workdir / "ca.crt", pki.ca_file.read_bytes())
        write_public(workdir / "server.crt", pki.server_cert.read_bytes())
        write_private(workdir / "server.key", pki.server_key.read_bytes())
        self.conf_path.write_text(
            render_config(
                SHIPPED_CONF.read_text(),
                workdir=workdir,
                port=self.port,
                cert_port=self.cert_port,
                run_as=run_as,
            )
        )

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    def enroll(self, name: str, out: Path, **kw: Any) -> Enrollment:
        """``fleet devices enroll`` into this broker's password and ACL files; SIGHUP if running."""
        result = enroll(name, out, password_file=self.password_file, acl_file=self.acl_file, **kw)
        self.reload()
        return result

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads password_file and acl_file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(1)


class ConnectRefused(Exception):
    """The broker answered CONNECT with a failure reason."""


class Client:
    """A paho MQTT 5 client over TLS (verification on) with credentials; collects what it receives."""

    def __init__(
        self,
        port: int,
        ca_file: Path | None,
        *,
        username: str | None = None,
        password: str | None = None,
        cert: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
        client_id: str | None = None,
        session_expiry_s: int = 0,
    ) -> None:
        self.host, self.port = host, port
        # session_expiry_s > 0: a persistent MQTT 5 session (clean start off), as the fleet server's.
        self.session_expiry_s = session_expiry_s
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._connack = threading.Event()
        self.connect_reason: Any = None
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition(self._lock)
        self.suback: list[Any] = []
        self._subacked = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"sec-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(
                ca_certs=str(ca_file),
                certfile=str(cert[0]) if cert else None,
                keyfile=str(cert[1]) if cert else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.disconnected = threading.Event()
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connect_reason = rc
        self._connack.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        rec = Received(msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos), time.monotonic())
        with self._lock:
            self._messages.append(rec)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        with self._acked:
            self._acks[mid] = rc
            self._acked.notify_all()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None
    ) -> None:
        self.suback = list(rcs)
        self._subacked.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self.disconnect_reason = rc
        self.disconnected.set()

    def send(self, topic: str, payload: bytes) -> None:
        """QoS 1 publish without waiting for the PUBACK."""
        self.client.publish(topic, payload, qos=1)

    def connect(self, timeout: float = 10.0) -> Client:
        """Connect and wait for CONNACK; raise ConnectRefused (or ssl/OS errors) when refused."""
        props = None
        if self.session_expiry_s:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
        self.client.connect(
            self.host, self.port, keepalive=10, clean_start=not self.session_expiry_s, properties=props
        )
        self.client.loop_start()
        if not self._connack.wait(timeout):
            self.close()
            raise ConnectRefused(f"no CONNACK within {timeout}s")
        if getattr(self.connect_reason, "is_failure", False):
            self.close()
            raise ConnectRefused(str(self.connect_reason))
        return self

    def subscribe(self, topic: str, timeout: float = 10.0) -> list[Any]:
        """Subscribe at QoS 1 and return the SUBACK reason codes."""
        self._subacked.clear()
        self.client.subscribe(topic, qos=1)
        if not self._subacked.wait(timeout):
            raise TimeoutError(f"no SUBACK for {topic}")
        return self.suback

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> Any:
        """QoS 1 publish; wait for the broker's PUBACK (the broker has routed or dropped it by then)."""
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + timeout
        with self._acked:
            while info.mid not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no PUBACK for {topic}")
                self._acked.wait(left)
            return self._acks.pop(info.mid)

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def wait_for_topic(self, topic: str, timeout: float = 10.0) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(topic)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing on {topic} within {timeout}s")
            time.sleep(0.02)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def topic(device: str, channel: str) -> str:
    return f"{ROOT}/devices/{device}/{channel}"
