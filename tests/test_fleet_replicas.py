"""Two `fleet serve` replicas on one PostgreSQL and one Mosquitto: shared state, shared ingest, failover.

Real processes: the run's own PostgreSQL, a real Mosquitto (MQTT 5 shared subscriptions), two
`fleet serve` replicas with their own data directories and broker client ids, one TUF repository
directory shared by both (the shared-directory choice, see docs/replicas.md), and simulated
devices in this process (so the test knows every seq they sent).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from sim.fleet import SimFleet, SimOptions
from tests.fleet_support import FleetServer, make_bundle, make_keys
from tests.mqtt import Mosquitto, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = "replica-test-admin-token-0123456789"
DEVICES = [f"rep-{i}" for i in range(1, 9)]


class Replica(FleetServer):
    """A `fleet serve` replica: shared repository, shared subscription group, its own client id."""

    def __init__(self, workdir: Path, name: str, broker_url: str, keys: Path, db: str, repo: Path) -> None:
        super().__init__(
            workdir / name,
            broker_url,
            keys,
            database_url=db,
            extra_env={
                "LINESIDE_FLEET_REPO_DIR": str(repo),
                "LINESIDE_FLEET_SHARED_SUBSCRIPTION_GROUP": "fleet",
                "LINESIDE_FLEET_MQTT_CLIENT_ID": f"fleet-{name}",
                "LINESIDE_FLEET_ADMIN_TOKEN": ADMIN,
                "LINESIDE_FLEET_CONTROLLER_ELECT_EVERY_S": "0.5",
            },
        )
        self.name = name
        self.keys = keys
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def token(self) -> str:
        return ADMIN

    def health(self) -> dict[str, Any]:
        try:
            r = httpx.get(f"{self.url}/healthz", timeout=2.0)
            return dict(r.json()) if r.status_code == 200 else {}
        except httpx.HTTPError:
            return {}


@pytest.fixture
def replicas(tmp_path: Path, mosquitto: Mosquitto, postgres_url: str) -> Iterator[tuple[Replica, Replica]]:
    keys = make_keys(tmp_path)
    repo = tmp_path / "shared-repo"
    a = Replica(tmp_path, "a", mosquitto.url, keys, postgres_url, repo)
    b = Replica(tmp_path, "b", mosquitto.url, keys, postgres_url, repo)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for r in (a, b):
            r.stop()
            print(f"--- replica {r.name} ---\n{r.log()[-4000:]}")


def _leader(a: Replica, b: Replica) -> Replica | None:
    ha, hb = a.health(), b.health()
    leaders = [r for r, h in ((a, ha), (b, hb)) if h.get("controller")]
    assert len(leaders) <= 1, "two replicas claim the rollout controller"
    return leaders[0] if leaders else None


def _seqs(db_url: str, table: str) -> dict[str, list[int]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            rows = c.execute(text(f"SELECT device_id, seq FROM {table} ORDER BY device_id, seq")).all()
    finally:
        engine.dispose()
    out: dict[str, list[int]] = {}
    for device, seq in rows:
        out.setdefault(device, []).append(int(seq))
    return out


def test_release_through_one_replica_is_served_by_the_other(
    replicas: tuple[Replica, Replica], tmp_path: Path, mosquitto: Mosquitto
) -> None:
    a, b = replicas
    a.cli("release", str(make_bundle(tmp_path, "1.0.0")), "--keys", str(a.keys), "--server", a.url)
    assert [m["version"] for m in b.cli_json("models", "list")] == ["1.0.0"]
    ts_a = httpx.get(f"{a.url}/tuf/metadata/timestamp.json", timeout=5)
    ts_b = httpx.get(f"{b.url}/tuf/metadata/timestamp.json", timeout=5)
    assert ts_a.status_code == ts_b.status_code == 200 and ts_a.content == ts_b.content
    # And the other way round, extending what the first one published.
    b.cli("release", str(make_bundle(tmp_path, "2.0.0")), "--keys", str(a.keys), "--server", b.url)
    assert [m["version"] for m in a.cli_json("models", "list")] == ["1.0.0", "2.0.0"]
    assert (
        httpx.get(f"{a.url}/tuf/metadata/timestamp.json", timeout=5).content
        == httpx.get(f"{b.url}/tuf/metadata/timestamp.json", timeout=5).content
    )
    # Both stay on the broker: each connected once under its own client id, never knocked off
    # by the other (the broker logs a takeover as "already connected").
    assert a.health()["mqtt_connected"] and b.health()["mqtt_connected"]
    log = mosquitto.log_tail(200_000)
    for r in (a, b):
        assert log.count(f"as fleet-{r.name} ") == 1, log[-2000:]
    assert "already connected" not in log


def test_kill_the_controller_holder_mid_rollout_the_other_completes_it_and_every_seq_is_stored_once(
    replicas: tuple[Replica, Replica], tmp_path: Path, mosquitto: Mosquitto, postgres_url: str
) -> None:
    a, b = replicas
    keys = str(a.keys)
    for v in ("1.0.0", "2.0.0"):
        a.cli("release", str(make_bundle(tmp_path, v)), "--keys", keys, "--server", a.url)
    leader = wait_until(lambda: _leader(a, b), 15, what="one replica holds the controller")
    standby = b if leader is a else a

    opts = SimOptions(window_s=0.3, install_delay_s=0.2, probation_s=1.5, server_url=a.url)
    fleet = SimFleet(mosquitto.url, DEVICES, opts)
    first = {dev.device_id: (dev.tel_seq, dev.ev_seq) for dev, _ in fleet.devices}
    fleet.start()
    try:
        wait_until(lambda: fleet.connected() == len(DEVICES), 20, what="simulated devices connected")
        wait_until(
            lambda: sum(1 for d in standby.cli_json("devices", "list") if d.get("online")) == len(DEVICES),
            20,
            what="devices online through the standby",
        )
        ro = standby.cli_json(
            "rollout",
            "start",
            "shapes@2.0.0",
            "--devices",
            ",".join(DEVICES),
            "--stages",
            "1,50%,100%",
            "--soak",
            # Long enough that "past the first stage, not finished" outlasts a few CLI round
            # trips on a loaded machine (with 1 s the rollout could finish between two of them).
            "30s",
            "--min-gate-frames",
            "1",
        )
        rid = ro["id"]

        def status() -> dict[str, Any]:
            return dict(standby.cli_json("rollout", "status", rid))

        # Mid-rollout: the first stage is done, later stages are not.
        wait_until(lambda: status()["stage"] >= 1, 40, what="the rollout past its first stage")
        assert status()["state"] == "running"
        leader.kill()
        killed_at = time.monotonic()
        wait_until(lambda: standby.health().get("controller"), 15, what="the standby takes the controller")
        takeover_s = time.monotonic() - killed_at
        final = wait_until(
            lambda: (st := status())["state"] != "running" and st, 180, what="the rollout finishes"
        )
        assert final["state"] == "succeeded", final
        assert all(p["status"] == "passed" for p in final["devices"].values())
        assert takeover_s < 10, takeover_s

        # The killed replica comes back (systemd would restart it) under the same client id:
        # its persistent session hands it what waited there, and it writes it.
        leader.start()
        assert not leader.health().get("controller")  # the survivor keeps the controller
        fleet.telemetry_paused.set()
        wait_until(lambda: fleet.connected() == len(DEVICES), 10, what="devices still connected")
        expected_tel: dict[str, list[int]] = {}
        expected_ev: dict[str, list[int]] = {}

        def settled() -> bool:
            # Read the devices' counters after the pause took effect (one more window may have
            # been emitted just before it), then compare with what the database holds.
            for dev, _ in fleet.devices:
                t0, e0 = first[dev.device_id]
                expected_tel[dev.device_id] = list(range(t0 + 1, dev.tel_seq + 1))
                expected_ev[dev.device_id] = list(range(e0 + 1, dev.ev_seq + 1))
            return (
                _seqs(postgres_url, "telemetry") == expected_tel
                and _seqs(postgres_url, "events") == expected_ev
            )

        try:
            wait_until(settled, 30, interval=0.5, what="every telemetry and event seq stored")
        except TimeoutError:
            tel, ev = _seqs(postgres_url, "telemetry"), _seqs(postgres_url, "events")
            missing = {d: sorted(set(expected_tel[d]) - set(tel.get(d, []))) for d in DEVICES}
            missing_ev = {d: sorted(set(expected_ev[d]) - set(ev.get(d, []))) for d in DEVICES}
            raise AssertionError(f"missing telemetry {missing}, events {missing_ev}") from None
        # The unique (device, seq) keys forbid a second copy; count rows to be sure nothing else did.
        assert sum(len(v) for v in _seqs(postgres_url, "telemetry").values()) == sum(
            len(v) for v in expected_tel.values()
        )
    finally:
        fleet.stop()


def test_repository_writes_wait_for_the_database_publish_lock(tmp_path: Path, postgres_url: str) -> None:
    """Replicas share the repository directory; their writes take turns through PostgreSQL."""
    import threading

    from fleet_server.db import PUBLISH_LOCK_ID, Database
    from fleet_server.tuf_repo import Repository

    db = Database(postgres_url)
    db.create()
    repo = Repository.open_or_create(tmp_path / "repo", make_keys(tmp_path), writer_lock=db.publish_lock)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (repo.heal(), done.set()), daemon=True)
    engine = create_engine(postgres_url)

    def waiting() -> bool:
        with engine.connect() as c:
            n = c.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND NOT granted"
                ),
                {"k": PUBLISH_LOCK_ID},
            ).scalar()
        return bool(n)

    try:
        with db.publish_lock():  # another replica is publishing
            writer.start()
            wait_until(waiting, 10, what="the repository write waiting for the publish lock")
            assert not done.is_set()
        writer.join(timeout=10)
        assert done.is_set()
    finally:
        engine.dispose()
        db.dispose()


def test_a_stalled_ingest_never_stops_the_server_sending_commands(mosquitto: Mosquitto) -> None:
    """At 10,000 devices ingest falls behind; deploys must still go out (the broker keeps the backlog)."""
    import threading
    from typing import cast

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.messages import Topics
    from fleet_server.ingest import Ingest, MqttLink
    from tests.mqtt import Collector

    release = threading.Event()

    class StalledIngest:
        """The database is slow: every batch waits until the test lets it go."""

        def write_batch(self, items: list[Any]) -> Any:
            release.wait(30)
            from fleet_server.ingest import IngestCounts

            return IngestCounts()

    topics = Topics("lineside/v1")
    link = MqttLink(
        mosquitto.url,
        topics,
        cast(Ingest, StalledIngest()),
        client_id="fleet-stalled",
        queue_max=20,
        batch_max=5,
    )
    devices = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood", protocol=mqtt.MQTTv5)
    devices.connect(mosquitto.host, mosquitto.port)
    devices.loop_start()
    link.start()
    try:
        with Collector(mosquitto.host, mosquitto.port, topics.wildcard("cmd")) as robots:
            wait_until(link.connected.is_set, 10, what="the link connected")
            for i in range(200):  # far more than the link's queues hold
                devices.publish(topics.device(f"d{i % 7}", "telemetry"), b"{}", qos=1)
            # Full: one batch of 5 is stuck in the database, the rest of what 20 in flight allows waits.
            wait_until(lambda: link.backlog >= 15, 10, what="the ingest queue full")
            for i in range(300):  # a rollout's deploys, more than paho keeps in flight at once
                link.publish(topics.device(f"d{i}", "cmd"), b'{"type": "ping"}')
            wait_until(lambda: len(robots.messages()) == 300, 15, what="every command delivered")
            assert link.backlog <= link.receive_maximum and not release.is_set()
    finally:
        release.set()
        link.stop()
        devices.loop_stop()
        devices.disconnect()
