"""Who may say what a package was, on the locked-down broker (deploy/mosquitto/lineside.conf +
``fleet devices enroll``, a real Mosquitto): a line checker and the fleet server (relaying an
operator's POST) publish truth; a robot reads its own truth topic and can publish no truth at all.

As in test_security_broker.py, each "cannot" is proven after a positive control on the same path
arrived: the broker routes a connection's QoS 1 publishes in order, so no sleep is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server import enroll as en
from tests.mqtt import find_mosquitto
from tests.pg_support import require_program
from tests.tls_support import Client, Pki, SecureBroker, make_pki, topic

pytestmark = pytest.mark.integration


class Plant:
    def __init__(self, broker: SecureBroker, pki: Pki, creds: dict[str, str]) -> None:
        self.broker, self.pki, self.creds = broker, pki, creds

    def client(self, user: str) -> Client:
        return Client(self.broker.port, self.pki.ca_file, username=user, password=self.creds[user]).connect()


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    binary = find_mosquitto()
    if binary is None:
        require_program("the mosquitto binary", "apt-get install mosquitto")
    tmp = tmp_path_factory.mktemp("truth-broker")
    pki = make_pki(tmp / "pki")
    broker = SecureBroker(binary, tmp / "broker", pki)
    creds: dict[str, str] = {}
    for name, kind in (("robot-a", "device"), ("robot-b", "device"), ("checker-1", "checker")):
        r = broker.enroll(name, tmp / "creds", kind=kind)
        assert r.password is not None
        creds[name] = r.password
    fl = broker.enroll(en.FLEET_USER, tmp / "creds", kind="fleet")
    assert fl.password is not None
    creds[en.FLEET_USER] = fl.password
    broker.start()
    try:
        yield Plant(broker, pki, creds)
    finally:
        broker.stop()


def test_a_robot_cannot_publish_truth_about_its_own_or_anothers_decisions(plant: Plant) -> None:
    forged = b'{"decision_id": "1.aa-1", "label": "forged"}'
    with plant.client("robot-a") as a, plant.client("robot-b") as b, plant.client("checker-1") as chk:
        a.subscribe(topic("robot-a", "truth"))
        b.subscribe(topic("robot-b", "truth"))
        a.publish(topic("robot-a", "truth"), forged)
        a.publish(topic("robot-b", "truth"), forged)
        b.publish(topic("robot-b", "truth"), forged)
        chk.publish(topic("robot-a", "truth"), b'{"control": "a"}')
        chk.publish(topic("robot-b", "truth"), b'{"control": "b"}')
        a.wait_for_topic(topic("robot-a", "truth"))
        b.wait_for_topic(topic("robot-b", "truth"))
        assert [m.payload for m in a.messages()] == [b'{"control": "a"}']
        assert [m.payload for m in b.messages()] == [b'{"control": "b"}']


def test_a_robot_reads_only_its_own_truth_and_the_fleet_server_may_relay(plant: Plant) -> None:
    with plant.client("robot-a") as a, plant.client(en.FLEET_USER) as server:
        a.subscribe(f"{topic('robot-b', 'truth')}")
        a.subscribe(topic("robot-a", "truth"))
        server.publish(topic("robot-b", "truth"), b'{"for": "b"}')
        server.publish(topic("robot-a", "truth"), b'{"control": "relayed"}')
        a.wait_for_topic(topic("robot-a", "truth"))
        assert [m.payload for m in a.messages()] == [b'{"control": "relayed"}']


def test_a_line_checker_reads_decisions_and_nothing_it_may_not(plant: Plant) -> None:
    with plant.client("checker-1") as chk, plant.client("robot-a") as a:
        chk.subscribe(topic("robot-a", "cmd"))
        chk.subscribe(topic("robot-a", "decisions"))
        chk.publish(topic("robot-a", "cmd"), b'{"type": "rollback", "cmd_id": "evil"}')
        chk.publish(topic("robot-a", "telemetry"), b'{"forged": true}')
        a.publish(topic("robot-a", "decisions"), b'{"control": true}')
        chk.wait_for_topic(topic("robot-a", "decisions"))
        assert [m.topic for m in chk.messages()] == [topic("robot-a", "decisions")]


def test_acl_kinds_round_trip() -> None:
    text = en.merge_acl(en.fleet_acl(), en.checker_acl("checker-1"))
    text = en.merge_acl(text, en.device_acl("robot-1"))
    assert en.acl_user_kind(text, "checker-1") == "checker"
    assert en.acl_user_kind(text, "robot-1") == "device"
    assert en.acl_user_kind(text, en.FLEET_USER) == "fleet"
    assert "topic write lineside/v1/devices/robot-1/truth" not in en.device_acl("robot-1")


def test_enroll_cli_line_checker_writes_a_checker_block(tmp_path: Path) -> None:
    import subprocess
    import sys

    acl = tmp_path / "acl"
    cp = subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "devices", "enroll", "checker-9", "--line-checker",
         "--out", str(tmp_path / "out"), "--acl-file", str(acl), "--password-file", str(tmp_path / "pw")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    assert en.acl_user_kind(acl.read_text(), "checker-9") == "checker"
    # A robot's name cannot be re-enrolled as a checker (its ACL would change kind).
    en.enroll("robot-9", tmp_path / "r", acl_file=acl, password_file=tmp_path / "pw")
    bad = subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "devices", "enroll", "robot-9", "--line-checker",
         "--out", str(tmp_path / "out2"), "--acl-file", str(acl), "--password-file", str(tmp_path / "pw")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
