"""End to end: a real Mosquitto, `fleet serve` under uvicorn (a subprocess), simulated devices
(`edge-sim fleet`, another subprocess) and the `fleet` CLI — on SQLite and on PostgreSQL.

To run the same story against real agents, start them with the `edge_agent_process` fixture
(pointed at ``server.url``/tuf and ``keys/root.json``) instead of ``SimFleetProcess``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from fleet_server.db import Database, EventRow, TelemetryRow
from tests.fleet_support import (
    FleetServer,
    SimFleetProcess,
    make_bundle,
    make_keys,
    wait_for,
)
from tests.mqtt import Mosquitto

pytestmark = pytest.mark.integration
DEVICES = ["sim-1", "sim-2", "sim-3"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None  # the default: SQLite under the data dir
    url: str = request.getfixturevalue("postgres_url")  # a new database for this test
    return url


@pytest.fixture
def fleet(
    tmp_path: Path, mosquitto: Mosquitto, database_url: str | None
) -> Iterator[Callable[..., tuple[FleetServer, SimFleetProcess]]]:
    """Start the server (with releases 1.0.0, 2.0.0, 3.0.0) and 3 simulated devices."""
    started: list[Any] = []

    def start(*sim_args: str) -> tuple[FleetServer, SimFleetProcess]:
        keys = make_keys(tmp_path)
        server = FleetServer(tmp_path, mosquitto.url, keys, database_url=database_url)
        started.append(server)
        server.start()
        for v in ("1.0.0", "2.0.0", "3.0.0"):
            server.cli(
                "release",
                str(make_bundle(tmp_path, v)),
                "--keys",
                str(keys),
                "--server",
                server.url,
                "--token",
                server.token,
            )
        sim = SimFleetProcess(
            tmp_path,
            mosquitto.url,
            "--devices",
            "3",
            "--window",
            "0.3",
            "--fps",
            "20",
            "--probation",
            "0.5",
            "--server",
            server.url,
            *sim_args,
        )
        started.append(sim)
        sim.start()

        def baseline_ready() -> bool:
            devs = server.cli_json("devices", "list")
            if sorted(d["device_id"] for d in devs if d["online"]) != DEVICES:
                return False
            return all(len(server.cli_json("devices", "show", d)["recent_telemetry"]) >= 4 for d in DEVICES)

        wait_for(baseline_ready, 30, "3 devices online with pre-rollout telemetry")
        return server, sim

    yield start
    for p in reversed(started):
        p.stop()
    for p in started:
        if isinstance(p, FleetServer):
            print(f"--- fleet serve log ---\n{p.log()[-5000:]}")
        else:
            print(f"--- sim log ---\n{p.log()[-2000:]}")


def _rollout(server: FleetServer, version: str, soak: str = "1s") -> str:
    r = server.cli_json(
        "rollout",
        "start",
        f"shapes@{version}",
        "--devices",
        ",".join(DEVICES),
        "--stages",
        "1,100%",
        "--soak",
        soak,
        "--min-gate-frames",
        "10",
    )
    rid: str = r["id"]
    return rid


def _active(server: FleetServer) -> dict[str, str]:
    return {d["device_id"]: d["active_model"] for d in server.cli_json("devices", "list")}


def test_staged_rollout_reaches_every_device(
    fleet: Callable[..., tuple[FleetServer, SimFleetProcess]],
) -> None:
    server, _ = fleet()
    rid = _rollout(server, "2.0.0")
    watched = server.cli("rollout", "status", rid, "--watch", "--interval", "0.3", check=False)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    st = server.cli_json("rollout", "status", rid)
    assert st["state"] == "succeeded"
    assert [(s["devices"], s["counts"]) for s in st["stages"]] == [(1, {"passed": 1}), (2, {"passed": 2})]
    canary = st["devices"]["sim-1"]
    for d in ("sim-2", "sim-3"):  # the rest were sent only after the canary passed
        assert st["devices"][d]["first_sent_at"] >= canary["passed_at"]
    table = server.cli("rollout", "status", rid).stdout
    assert "succeeded" in table and "100%" in table and "2/2" in table
    wait_for(lambda: set(_active(server).values()) == {"shapes@2.0.0"}, 10, "every device reports 2.0.0")


def test_worse_confidence_halts_after_canary_and_rolls_it_back(
    fleet: Callable[..., tuple[FleetServer, SimFleetProcess]], database_url: str | None
) -> None:
    server, _ = fleet("--low-confidence-version", "3.0.0")
    rid = _rollout(server, "3.0.0")
    watched = server.cli("rollout", "status", rid, "--watch", "--interval", "0.3", check=False)
    assert watched.returncode == 3, watched.stdout + watched.stderr
    assert "halted" in watched.stderr and "confidence" in watched.stderr
    st = server.cli_json("rollout", "status", rid)
    assert st["state"] == "halted" and st["stage"] == 0
    assert st["devices"]["sim-1"]["status"] == "rolled_back"
    assert {st["devices"][d]["status"] for d in ("sim-2", "sim-3")} == {"waiting"}
    wait_for(lambda: _active(server)["sim-1"] == "shapes@1.0.0", 10, "the canary back on 1.0.0")
    assert _active(server) == {d: "shapes@1.0.0" for d in DEVICES}
    # The others never received a deploy: no update event from them at all.
    db = Database(database_url or f"sqlite:///{server.data_dir / 'fleet.db'}")
    with db.session() as s:
        kinds = s.execute(
            select(EventRow.device_id, EventRow.kind).where(EventRow.kind.like("update.%"))
        ).all()
    db.dispose()
    assert {d for d, _ in kinds} == {"sim-1"}
    alerts = server.cli_json("alerts")
    halt = [a for a in alerts if a["kind"] == "rollout.halted" and a["rollout_id"] == rid]
    assert len(halt) == 1 and "confidence p50 dropped" in halt[0]["message"] and "sim-1" in halt[0]["message"]


def test_server_killed_mid_rollout_resumes_without_double_counting(
    fleet: Callable[..., tuple[FleetServer, SimFleetProcess]], database_url: str | None
) -> None:
    server, _ = fleet()
    rid = _rollout(server, "2.0.0", soak="3s")
    wait_for(
        lambda: server.cli_json("rollout", "status", rid)["devices"]["sim-1"]["status"] == "passed",
        20,
        "canary passed",
    )
    server.kill()  # SIGKILL: no shutdown, unacked messages stay with the broker
    server.start()
    wait_for(
        lambda: server.cli_json("rollout", "status", rid)["state"] != "running",
        40,
        "rollout finished after restart",
    )
    st = server.cli_json("rollout", "status", rid)
    assert st["state"] == "succeeded", st["history"]
    assert set(_active(server).values()) == {"shapes@2.0.0"}
    # Every telemetry window stored exactly once: seqs are consecutive per device, so rows == span.
    db = Database(database_url or f"sqlite:///{server.data_dir / 'fleet.db'}")
    with db.session() as s:
        rows = s.execute(
            select(
                TelemetryRow.device_id,
                func.count(),
                func.count(func.distinct(TelemetryRow.seq)),
                func.min(TelemetryRow.seq),
                func.max(TelemetryRow.seq),
            ).group_by(TelemetryRow.device_id)
        ).all()
    db.dispose()
    assert sorted(r[0] for r in rows) == DEVICES
    for device, n, distinct, lo, hi in rows:
        assert n == distinct == hi - lo + 1, (device, n, distinct, lo, hi)
