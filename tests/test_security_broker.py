"""The locked-down broker: deploy/mosquitto/lineside.conf + `fleet devices enroll`, against a real Mosquitto.

Each "cannot" test first proves a positive control arrives (the same path, allowed), then that
the forbidden message did not: the broker handles one connection's packets in order and routes a
QoS 1 publish before it sends the PUBACK, so once the control (sent after that PUBACK) is in,
anything the broker had let through would already be there. No sleep is the synchronisation.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.messages import Telemetry, dump
from fleet_server import enroll as en
from fleet_server.settings import FleetSettings
from lineside_common.atomic import atomic_write_bytes
from tests.fleet_support import FleetServer, make_keys
from tests.mqtt import find_mosquitto, wait_until
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
    assert len(rules) == 7 and not any("+" in r or "#" in r for r in rules)
    assert "topic write lineside/v1/devices/robot-1/cmd" not in rules
    # The line's state: the robot reads it, never writes it (that is the line controller's).
    assert "topic read lineside/v1/devices/robot-1/line" in rules
    assert "topic write lineside/v1/devices/robot-1/line" not in rules
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
    from lineside_common.errors import ConfigError

    with pytest.raises(ConfigError):
        en.enroll("a/#", tmp_path)
    with pytest.raises(ConfigError):
        en.enroll(en.FLEET_USER, tmp_path)


def test_enroll_never_turns_a_fleet_server_user_into_a_device_or_back(tmp_path: Path) -> None:
    """Each fleet-server replica is its own broker user now; re-enrolling one without
    --fleet-server would replace its ACL with a device's and cut it off every device channel."""
    from lineside_common.errors import ConfigError

    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    en.enroll("lineside-fleet-2", tmp_path / "a", kind="fleet", password_file=pw, acl_file=acl)
    en.enroll("robot-1", tmp_path / "b", password_file=pw, acl_file=acl)
    text = acl.read_text()
    assert en.acl_user_kind(text, "lineside-fleet-2") == "fleet"
    assert en.acl_user_kind(text, en.FLEET_USER) == "fleet"
    assert en.acl_user_kind(text, "robot-1") == "device"
    assert en.acl_user_kind(text, "nobody") is None
    before = (pw.read_bytes(), acl.read_bytes())
    with pytest.raises(ConfigError):
        en.enroll("lineside-fleet-2", tmp_path / "c", password_file=pw, acl_file=acl)
    with pytest.raises(ConfigError):
        en.enroll("robot-1", tmp_path / "d", kind="fleet", password_file=pw, acl_file=acl)
    assert (pw.read_bytes(), acl.read_bytes()) == before
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
    # Same kind again: a rotation, allowed.
    en.enroll("lineside-fleet-2", tmp_path / "e", kind="fleet", password_file=pw, acl_file=acl)


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
    # A new broker file: its directory's owner and group; 0600 as this directory admits no group.
    st, dst = (tmp_path / "passwd").stat(), tmp_path.stat()
    assert stat.S_IMODE(dst.st_mode) & 0o070 == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (dst.st_uid, dst.st_gid)
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


# -- issue 13, hole 2: client ids are bound to user names ------------------------------------------


def test_client_ids_default_to_the_broker_user_name(tmp_path: Path) -> None:
    """The shipped broker replaces every client id by the user name: fleet serve and the agent
    use that very id, so a replica's persistent session is keyed by its own user."""
    assert FleetSettings(broker_username="lineside-fleet-2").mqtt_client_id == "lineside-fleet-2"
    assert FleetSettings().mqtt_client_id == en.FLEET_USER
    assert FleetSettings(broker_username="u", mqtt_client_id="explicit").mqtt_client_id == "explicit"
    base = 'device_id = "robot-1"\n[source]\nuri = "/tmp/rec"\n'
    (tmp_path / "a.toml").write_text(base + '[broker]\nusername = "robot-1"\npassword = "x"\n')
    assert load_config(tmp_path / "a.toml").client_id == "robot-1"
    (tmp_path / "c.toml").write_text(
        base + '[broker.tls]\nenabled = true\ncert_file = "/c"\nkey_file = "/k"\n'
    )
    assert load_config(tmp_path / "c.toml").client_id == "robot-1"


def _alive(c: Client, own_topic: str) -> bool:
    """A QoS 1 round trip on ``c``'s connection, then: was it ever disconnected? The broker closes
    a taken-over connection before it answers the new CONNECT, so after the attacker's CONNACK a
    victim that was kicked has seen its disconnect by the time its PUBACK comes back."""
    c.publish(own_topic, b'{"ping": true}')
    return not c.disconnected.is_set()


@pytest.mark.integration
@pytest.mark.parametrize("via", ["password", "certificate"])
@pytest.mark.parametrize("victim", [en.FLEET_USER, "robot-b"])
def test_a_robot_cannot_take_over_another_clients_id(fleet: Fleet, victim: str, via: str) -> None:
    """robot-a's password (or robot-c's certificate, on the mutual-TLS listener) with the fleet
    server's (or robot-b's) client id: the broker makes the id the attacker's own user name, and
    the victim stays connected with its persistent session."""
    own = topic("robot-b", "cmd") if victim == en.FLEET_USER else topic("robot-b", "telemetry")
    v = Client(
        fleet.broker.port,
        fleet.pki.ca_file,
        username=victim,
        password=fleet.creds[victim],
        client_id=victim,
        session_expiry_s=300,
    ).connect()
    try:
        assert _alive(v, own)  # positive control: the victim's round trip works
        if via == "password":
            attacker = Client(
                fleet.broker.port,
                fleet.pki.ca_file,
                username="robot-a",
                password=fleet.creds["robot-a"],
                client_id=victim,
            )
        else:
            cert = (fleet.cert_dir / "robot-c.crt", fleet.cert_dir / "robot-c.key")
            attacker = Client(fleet.broker.cert_port, fleet.pki.ca_file, cert=cert, client_id=victim)
        with contextlib.suppress(ConnectRefused):  # refused is as good as harmless
            attacker.connect().close()
        assert _alive(v, own), f"connecting as robot-a with client id {victim!r} kicked {victim} off"
    finally:
        v.close()


def _telemetry(device: str, seq: int) -> bytes:
    return dump(Telemetry(device_id=device, seq=seq, window_start=datetime.now(UTC), window_s=1.0, frames=5))


def _stored_seqs(server: FleetServer, device: str) -> set[int]:
    db = server.data_dir / "fleet.db"
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT seq FROM telemetry WHERE device_id = ?", (device,)).fetchall()
        except sqlite3.OperationalError:  # table not created yet
            return set()
    return {int(r[0]) for r in rows}


def _enroll_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "devices", "enroll", *args],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    return cp


def _env_file(path: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln)


@pytest.mark.integration
def test_two_fleet_servers_each_their_own_user_lose_no_telemetry_to_a_takeover(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Two `fleet serve` replicas, each its own broker user (the second enrolled with
    `fleet devices enroll NAME --fleet-server`), client id left to its default. While the first
    is down, robot-b publishes and robot-a connects with clean start under each server's client
    id (which, were ids not bound, would discard the first server's queued session and kick the
    second). Every seq robot-b published is stored by both servers."""
    second = "lineside-fleet-2"
    _enroll_cli(second, "--fleet-server", "--out", str(tmp_path / "creds2"),
                "--password-file", str(fleet.broker.password_file),
                "--acl-file", str(fleet.broker.acl_file))  # fmt: skip
    fleet.broker.reload()
    fleet.creds[second] = (tmp_path / "creds2" / f"{second}.password").read_text().strip()

    def can_connect() -> bool:
        try:
            fleet.client(second).close()
            return True
        except ConnectRefused:
            return False

    wait_until(can_connect, 10, what="the reloaded broker accepts the second server's user")
    pw_file = tmp_path / "fleet.password"
    atomic_write_bytes(pw_file, fleet.creds[en.FLEET_USER].encode(), mode=0o600)
    keys = make_keys(tmp_path)
    servers = []
    for name, env in (
        (en.FLEET_USER, {"LINESIDE_FLEET_BROKER_USERNAME": en.FLEET_USER,
                         "LINESIDE_FLEET_BROKER_PASSWORD_FILE": str(pw_file)}),
        (second, _env_file(tmp_path / "creds2" / f"{second}.env")),
    ):  # fmt: skip
        (tmp_path / name).mkdir()
        s = FleetServer(
            tmp_path / name, fleet.broker.url, keys,
            extra_env={**env, "LINESIDE_FLEET_BROKER_CA_FILE": str(fleet.pki.ca_file)},
        )  # fmt: skip
        del s.env["LINESIDE_FLEET_MQTT_CLIENT_ID"]  # the default: its broker user name
        servers.append(s)
    first = servers[0]
    try:
        for s in servers:
            s.start()
        with fleet.client("robot-b") as b:
            for seq in range(10):
                b.publish(topic("robot-b", "telemetry"), _telemetry("robot-b", seq))
            for s in servers:
                wait_until(lambda s=s: _stored_seqs(s, "robot-b") >= set(range(10)), 20, what="online seqs")
            first.stop()
            for seq in range(10, 40):
                b.publish(topic("robot-b", "telemetry"), _telemetry("robot-b", seq))
            for victim in (en.FLEET_USER, second):
                with contextlib.suppress(ConnectRefused):  # refused is as good as harmless
                    Client(
                        fleet.broker.port, fleet.pki.ca_file, username="robot-a",
                        password=fleet.creds["robot-a"], client_id=victim,
                    ).connect().close()  # fmt: skip
            for seq in range(40, 50):
                b.publish(topic("robot-b", "telemetry"), _telemetry("robot-b", seq))
        first.start()
        for s in servers:
            wait_until(
                lambda s=s: _stored_seqs(s, "robot-b") == set(range(50)),
                20,
                what=f"every seq stored ({sorted(set(range(50)) - _stored_seqs(s, 'robot-b'))[:5]} missing)",
            )
    finally:
        for s in servers:
            s.stop()


# -- issue 13, hole 6: enroll keeps the owner and mode of the broker's files ------------------------


def test_broker_file_ownership_keeps_existing_and_picks_the_directory_group() -> None:
    group_dir = en.FileOwnership(0, 108, 0o750)  # root:mosquitto 0750
    own_dir = en.FileOwnership(105, 108, 0o700)  # mosquitto:mosquitto 0700 (the documented one)
    kept = en.FileOwnership(105, 108, 0o604)
    assert en.broker_file_ownership(kept, group_dir, euid=0) == kept
    assert en.broker_file_ownership(None, own_dir, euid=0) == en.FileOwnership(105, 108, 0o600)
    assert en.broker_file_ownership(None, group_dir, euid=0) == en.FileOwnership(0, 108, 0o640)
    assert en.broker_file_ownership(None, group_dir, euid=1000) == en.FileOwnership(1000, 108, 0o640)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_write_broker_file_keeps_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("old:x\n")
    os.chown(path, 4242, 4343)
    os.chmod(path, 0o604)
    link = tmp_path / "link"
    link.symlink_to(path)
    en.write_broker_file(link, "new:y\n")
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o604)
    assert path.read_text() == "new:y\n" and link.is_symlink()


def _mosquitto_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("starting Mosquitto so that it drops to its own user needs root")
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.fail("no `mosquitto` user: the Debian package creates it (apt-get install mosquitto)")


@pytest.mark.integration
def test_enroll_and_reload_keep_a_broker_running_as_its_own_user_serving(tmp_path: Path) -> None:
    """Mosquitto started as root drops to `mosquitto` (as Debian's service does) and reads files
    that user owns (0600, as the docs say). Enroll runs as root (the operator) and SIGHUP reloads:
    the existing clients stay connected and the new device can connect."""
    binary = find_mosquitto()
    assert binary is not None, "mosquitto not installed"
    user = _mosquitto_user()
    pki = make_pki(tmp_path / "pki")
    # pytest's temp dirs are 0700 root: the broker's files live where its user can reach them.
    work = Path(tempfile.mkdtemp(prefix="lineside-broker-", dir="/tmp"))
    try:
        broker = SecureBroker(binary, work, pki, run_as="mosquitto")
        creds: dict[str, str] = {}
        for name, kind in (("robot-a", "device"), (en.FLEET_USER, "fleet")):
            r = broker.enroll(name, tmp_path / "creds", kind=kind)
            assert r.password is not None
            creds[name] = r.password
        for p in [work, *work.iterdir()]:
            os.chown(p, user.pw_uid, user.pw_gid)
            os.chmod(p, 0o700 if p.is_dir() else 0o600)
        broker.start()
        try:
            server = Client(broker.port, pki.ca_file, username=en.FLEET_USER, password=creds[en.FLEET_USER])
            robot = Client(broker.port, pki.ca_file, username="robot-a", password=creds["robot-a"])
            with server.connect(), robot.connect():
                assert _alive(server, topic("robot-a", "cmd")) and _alive(robot, topic("robot-a", "events"))
                _enroll_cli("robot-new", "--out", str(tmp_path / "new"),
                            "--password-file", str(broker.password_file),
                            "--acl-file", str(broker.acl_file))  # fmt: skip
                for f in (broker.password_file, broker.acl_file):
                    st = f.stat()
                    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o600), f
                assert broker.proc is not None
                broker.proc.send_signal(signal.SIGHUP)
                new_pw = (tmp_path / "new" / "robot-new.password").read_text().strip()

                def new_device_connects() -> bool:
                    try:
                        Client(
                            broker.port, pki.ca_file, username="robot-new", password=new_pw
                        ).connect().close()
                        return True
                    except ConnectRefused:
                        return False

                wait_until(new_device_connects, 10, what="the new device connects after the reload")
                assert _alive(server, topic("robot-a", "cmd")), "the reload disconnected the fleet server"
                assert _alive(robot, topic("robot-a", "events")), "the reload disconnected robot-a"
                assert broker.running, broker.log_tail()
        finally:
            broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
