"""The locked-down broker: deploy/mosquitto/lineside.conf + `fleet devices enroll`, against a real Mosquitto.

Each "cannot" test first proves a positive control arrives (the same path, allowed), then that
the forbidden message did not: the broker handles one connection's packets in order and routes a
QoS 1 publish before it sends the PUBACK, so once the control (sent after that PUBACK) is in,
anything the broker had let through would already be there. No sleep is the synchronisation.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server import enroll as en
from tests.mqtt import find_mosquitto
from tests.pg_support import require_program
from tests.tls_support import ROOT, Client, ConnectRefused, Pki, SecureBroker, make_pki, topic

REPO = Path(__file__).resolve().parent.parent


# -- pure: the entries `fleet devices enroll` writes ------------------------------------------------


def test_hash_matches_mosquitto_passwd_format() -> None:
    line = en.hash_password("s3cret", salt=b"\x01" * 12)
    assert line.startswith("$7$101$") and en.verify_password("s3cret", line)
    assert not en.verify_password("s3cret!", line)
    assert not en.verify_password("s3cret", "$6$garbage")
    binary = en.shutil.which("mosquitto_passwd")
    if binary is None:
        require_program("mosquitto_passwd", "apt-get install mosquitto")
    theirs = en.password_line("u", "s3cret", use_binary=True)
    assert theirs.startswith("u:$7$") and en.verify_password("s3cret", theirs.split(":", 1)[1])


def test_acl_blocks_confine_a_device_and_merge_idempotently() -> None:
    block = en.device_acl("robot-1")
    assert "topic write lineside/v1/devices/robot-1/telemetry" in block
    assert "topic read lineside/v1/devices/robot-1/cmd" in block
    rules = [ln for ln in block.splitlines() if ln.startswith("topic ")]
    assert len(rules) == 5 and not any("+" in r or "#" in r for r in rules)
    assert "topic write lineside/v1/devices/robot-1/cmd" not in rules
    fleet = en.fleet_acl()
    assert (
        "topic write lineside/v1/devices/+/cmd" in fleet
        and "topic write lineside/v1/devices/+/state" not in fleet
    )
    text = en.merge_acl("# global\ntopic read $SYS/#\n", block)
    text = en.merge_acl(text, en.device_acl("robot-2"))
    again = en.merge_acl(text, en.device_acl("robot-1"))
    assert en.acl_users(again) == {"robot-1", "robot-2"}
    assert again.count("user robot-1") == 1 and again.startswith("# global\ntopic read $SYS/#")
    pw = en.merge_password_file("a:x\nb:y\n", "a:z")
    assert pw.splitlines() == ["b:y", "a:z"]


def test_enroll_refuses_bad_and_reserved_names(tmp_path: Path) -> None:
    from edge_agent.errors import ConfigError

    with pytest.raises(ConfigError):
        en.enroll("a/#", tmp_path)
    with pytest.raises(ConfigError):
        en.enroll(en.FLEET_USER, tmp_path)


def test_enroll_cli_writes_private_files_and_never_prints_the_password(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cp = subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "devices", "enroll", "robot-9", "--out", str(out),
         "--password-file", str(tmp_path / "passwd"), "--acl-file", str(tmp_path / "acl"), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    password = (out / "robot-9.password").read_text().strip()
    assert len(password) >= 32
    assert password not in cp.stdout and password not in cp.stderr
    result = json.loads(cp.stdout)
    assert result["username"] == "robot-9" and result["auth"] == "password"
    assert stat.S_IMODE((out / "robot-9.password").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600
    line = (tmp_path / "passwd").read_text().strip()
    assert line.startswith("robot-9:$7$") and en.verify_password(password, line.split(":", 1)[1])
    acl = (tmp_path / "acl").read_text()
    assert en.acl_users(acl) == {"robot-9", en.FLEET_USER}
    snippet = (out / "robot-9.broker.toml").read_text()
    assert 'username = "robot-9"' in snippet and password not in snippet
    bad = subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "devices", "enroll", "no/slash", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


# -- a real Mosquitto with the shipped config -------------------------------------------------------


class Fleet:
    """The broker plus enrolled users: robot-a, robot-b (passwords), robot-own (own $7$ hash),
    robot-c (client certificate), and the fleet server's user."""

    def __init__(self, broker: SecureBroker, pki: Pki, creds: dict[str, str], cert_dir: Path) -> None:
        self.broker, self.pki, self.creds, self.cert_dir = broker, pki, creds, cert_dir

    def client(self, user: str | None, *, password: str | None = None) -> Client:
        pw = password if password is not None else self.creds.get(user or "")
        return Client(self.broker.port, self.pki.ca_file, username=user, password=pw).connect()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = find_mosquitto()
    if binary is None:
        require_program("the mosquitto binary", "apt-get install mosquitto")
    tmp = tmp_path_factory.mktemp("secure-broker")
    pki = make_pki(tmp / "pki")
    broker = SecureBroker(binary, tmp / "broker", pki)
    creds: dict[str, str] = {}
    for name in ("robot-a", "robot-b"):
        r = broker.enroll(name, tmp / "creds")
        assert r.password is not None
        creds[name] = r.password
    # Without mosquitto_passwd: our own PBKDF2 $7$ line must be accepted by the real broker.
    own = broker.enroll("robot-own", tmp / "creds", use_binary=False)
    assert own.password is not None
    creds["robot-own"] = own.password
    fl = broker.enroll(en.FLEET_USER, tmp / "creds", kind="fleet")
    assert fl.password is not None
    creds[en.FLEET_USER] = fl.password
    cert = broker.enroll("robot-c", tmp / "certs", ca=pki.ca)
    assert cert.password is None
    broker.start()
    try:
        yield Fleet(broker, pki, creds, tmp / "certs")
    finally:
        broker.stop()


@pytest.mark.integration
def test_anonymous_and_wrong_password_are_refused(fleet: Fleet) -> None:
    with pytest.raises(ConnectRefused):
        Client(fleet.broker.port, fleet.pki.ca_file).connect()
    with pytest.raises(ConnectRefused):
        fleet.client("robot-a", password=fleet.creds["robot-b"])
    with pytest.raises(ConnectRefused):
        fleet.client("nobody", password="x" * 40)
    # Positive control: the right password gets in, including a hash computed without mosquitto_passwd.
    fleet.client("robot-a").close()
    fleet.client("robot-own").close()


@pytest.mark.integration
def test_tls_verification_rejects_a_broker_from_another_ca(fleet: Fleet, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", name="Attacker CA")
    c = Client(fleet.broker.port, other.ca_file, username="robot-a", password=fleet.creds["robot-a"])
    with pytest.raises(ssl.SSLCertVerificationError):
        c.connect()


@pytest.mark.integration
def test_device_cannot_publish_as_another_device(fleet: Fleet) -> None:
    with fleet.client(en.FLEET_USER) as server, fleet.client("robot-a") as a:
        server.subscribe(f"{ROOT}/devices/+/telemetry")
        server.subscribe(f"{ROOT}/devices/+/events")
        for channel in ("telemetry", "events", "state"):
            a.publish(topic("robot-b", channel), b'{"forged": true}')
        a.publish(topic("robot-a", "telemetry"), b'{"control": true}')
        server.wait_for_topic(topic("robot-a", "telemetry"))
        assert server.messages(topic("robot-b", "telemetry")) == []
        assert server.messages(topic("robot-b", "events")) == []
    # Nor can it leave a retained forged state for robot-b (a late reader sees none).
    with fleet.client(en.FLEET_USER) as late:
        late.subscribe(topic("robot-b", "state"))
        with fleet.client("robot-b") as b:
            b.publish(topic("robot-b", "state"), b'{"control": "from b"}')
        got = late.wait_for_topic(topic("robot-b", "state"))
        assert b"forged" not in got.payload and all(b"forged" not in m.payload for m in late.messages())


@pytest.mark.integration
def test_device_cannot_read_another_devices_commands(fleet: Fleet) -> None:
    with fleet.client(en.FLEET_USER) as server, fleet.client("robot-a") as a:
        a.subscribe(topic("robot-b", "cmd"))
        a.subscribe(f"{ROOT}/devices/+/cmd")
        a.subscribe("#")
        a.subscribe(topic("robot-a", "cmd"))
        server.publish(topic("robot-b", "cmd"), b'{"secret": "for b"}')
        server.publish(topic("robot-a", "cmd"), b'{"control": true}')
        a.wait_for_topic(topic("robot-a", "cmd"))
        assert a.messages(topic("robot-b", "cmd")) == []
        assert all(m.topic.startswith(f"{ROOT}/devices/robot-a/") for m in a.messages())


@pytest.mark.integration
def test_device_cannot_publish_on_any_cmd_topic(fleet: Fleet) -> None:
    deploy = json.dumps({"type": "deploy", "cmd_id": "evil", "name": "shapes", "version": "9.9.9"}).encode()
    with fleet.client("robot-b") as b, fleet.client(en.FLEET_USER) as server, fleet.client("robot-a") as a:
        b.subscribe(topic("robot-b", "cmd"))
        a.subscribe(topic("robot-a", "cmd"))
        a.publish(topic("robot-b", "cmd"), deploy)
        a.publish(topic("robot-a", "cmd"), deploy)  # not even its own cmd topic
        server.publish(topic("robot-b", "cmd"), b'{"control": "b"}')
        server.publish(topic("robot-a", "cmd"), b'{"control": "a"}')
        b.wait_for_topic(topic("robot-b", "cmd"))
        a.wait_for_topic(topic("robot-a", "cmd"))
        assert [m.payload for m in b.messages()] == [b'{"control": "b"}']
        assert [m.payload for m in a.messages()] == [b'{"control": "a"}']


@pytest.mark.integration
def test_fleet_user_cannot_forge_device_telemetry(fleet: Fleet) -> None:
    with fleet.client(en.FLEET_USER) as server, fleet.client("robot-b") as b:
        server.subscribe(f"{ROOT}/devices/+/telemetry")
        server.publish(topic("robot-a", "telemetry"), b'{"forged": true}')
        b.publish(topic("robot-b", "telemetry"), b'{"control": true}')
        server.wait_for_topic(topic("robot-b", "telemetry"))
        assert server.messages(topic("robot-a", "telemetry")) == []


@pytest.mark.integration
def test_client_certificate_is_the_identity_on_the_mutual_tls_listener(fleet: Fleet, tmp_path: Path) -> None:
    cert = (fleet.cert_dir / "robot-c.crt", fleet.cert_dir / "robot-c.key")
    assert stat.S_IMODE(cert[1].stat().st_mode) == 0o600
    port = fleet.broker.cert_port
    with fleet.client(en.FLEET_USER) as server:
        server.subscribe(f"{ROOT}/devices/+/telemetry")
        with Client(port, fleet.pki.ca_file, cert=cert).connect() as c:
            c.publish(topic("robot-a", "telemetry"), b'{"forged": true}')  # the ACL applies to the CN
            c.publish(topic("robot-c", "telemetry"), b'{"control": true}')
        server.wait_for_topic(topic("robot-c", "telemetry"))
        assert server.messages(topic("robot-a", "telemetry")) == []
    # No certificate, or one from another CA: refused during the TLS handshake.
    with pytest.raises((ssl.SSLError, OSError, ConnectRefused)):
        Client(port, fleet.pki.ca_file, username="robot-a", password=fleet.creds["robot-a"]).connect(
            timeout=5
        )
    rogue = make_pki(tmp_path / "rogue", name="Rogue CA")
    leaf = rogue.ca.issue("robot-c")
    (tmp_path / "r.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "r.key").write_bytes(leaf.key_pem)
    os.chmod(tmp_path / "r.key", 0o600)
    with pytest.raises((ssl.SSLError, OSError, ConnectRefused)):
        Client(port, fleet.pki.ca_file, cert=(tmp_path / "r.crt", tmp_path / "r.key")).connect(timeout=3)


@pytest.mark.integration
def test_oversized_publish_is_refused_by_the_broker(fleet: Fleet) -> None:
    """`max_packet_size` in the shipped config: a 300 kB publish is never routed; its sender is cut off."""
    with fleet.client(en.FLEET_USER) as server:
        server.subscribe(f"{ROOT}/devices/+/telemetry")
        a = fleet.client("robot-a")
        try:
            a.send(topic("robot-a", "telemetry"), b"x" * 300_000)
            assert a.disconnected.wait(10), "the broker kept a client that sent an oversized packet"
        finally:
            a.close()
        with fleet.client("robot-a") as again:
            again.publish(topic("robot-a", "telemetry"), b'{"control": true}')
        got = server.wait_for_topic(topic("robot-a", "telemetry"))
        assert got.payload == b'{"control": true}'
        assert all(len(m.payload) < 1000 for m in server.messages())


def test_enroll_cli_cert_creates_the_ca_once_and_issues_a_client_certificate(tmp_path: Path) -> None:
    from cryptography import x509

    def run(device: str) -> dict[str, object]:
        cp = subprocess.run(
            [sys.executable, "-m", "fleet_server.cli", "devices", "enroll", device, "--cert",
             "--data-dir", str(tmp_path / "fleet-data"), "--out", str(tmp_path / device), "--json"],
            capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip
        assert cp.returncode == 0, cp.stderr
        out: dict[str, object] = json.loads(cp.stdout)
        return out

    first, second = run("robot-1"), run("robot-2")
    assert first["auth"] == "certificate" and first["password_line"] is None
    ca_dir = tmp_path / "fleet-data" / "mqtt-ca"
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    for dev in ("robot-1", "robot-2"):
        cert = x509.load_pem_x509_certificate((tmp_path / dev / f"{dev}.crt").read_bytes())
        assert cert.issuer == ca.subject  # both from the one CA created on first use
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == dev
        cert.verify_directly_issued_by(ca)
        assert stat.S_IMODE((tmp_path / dev / f"{dev}.key").stat().st_mode) == 0o600
    assert second["files"] and "PRIVATE" not in (tmp_path / "robot-2" / "ca.crt").read_text()
