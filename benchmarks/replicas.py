"""8. Replicas at scale: N simulated devices against one and two ``fleet serve`` replicas on PostgreSQL.

Every piece is a real process: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``, as the
test suite starts it), Mosquitto (explicit queue limits, no connection limit), R ``fleet serve``
replicas sharing one database, one TUF repository directory and the MQTT 5 shared subscription
group ``fleet`` (each its own client id), and ``edge-sim fleet --devices N`` (one process,
epoll-multiplexed paho clients). Per (N, R): time until every device shows online; steady
telemetry at the agent's default window (5 s) — ingested by all replicas together against what
was offered, with the summed ingest backlog sampled; a rollout of v2 to all N in one stage timed
from the API call to ``succeeded``; CPU (% of one core) of the replicas, PostgreSQL (postmaster
and its backends), the broker and the simulator in each phase; each replica's RSS.
"""

from __future__ import annotations

import os
import re
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Check, Context, CpuMeter, Section, fmt, proc_cpu_s, proc_rss_mb, rollout_checks
from benchmarks.fleet import _run_cli, _telemetry, _wait, metrics, parse_version
from benchmarks.services import free_port, script, start_mosquitto, wait_port
from fleet_server.client import FleetClient
from sim.procs import ProcessGroup

ADMIN = "bench-replicas-admin-token-0123456789"


def _children_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and its direct children (PostgreSQL: postmaster and backends)."""
    total = proc_cpu_s(root)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == root:
            try:
                total += proc_cpu_s(int(entry))
            except OSError:
                continue
    return total


class _PgMeter:
    def __init__(self, root: int) -> None:
        self.root = root
        self.c0 = 0.0
        self.t0 = 0.0
        self.percent = float("nan")

    def start(self) -> _PgMeter:
        self.c0, self.t0 = _children_cpu_s(self.root), time.monotonic()
        return self

    def stop(self) -> _PgMeter:
        self.percent = 100.0 * (_children_cpu_s(self.root) - self.c0) / (time.monotonic() - self.t0)
        return self


def _raise_fd_limit(needed: int) -> None:
    # The broker (started from here) inherits this limit and holds one socket per device.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run_once(
    ctx: Context, n: int, replicas: int, window_s: float, steady_s: float, tmp: Path, keys: Path, db_url: str
) -> dict[str, Any]:
    """One (N, R): fresh broker, database and repository; measured in three phases."""
    from tests.pg_support import PostgresDatabases

    b = ctx.bundles()
    work = tmp / f"n{n}-r{replicas}"
    dbs = PostgresDatabases(db_url)
    url_db = dbs.create()
    with ProcessGroup(work / "logs") as group:
        broker_child, broker = start_mosquitto(group, work / "mosquitto")
        urls: list[str] = []
        servers = []
        for i in range(replicas):
            port = free_port()
            child = group.start(
                f"fleet-serve-{i}",
                [
                    *script("fleet"),
                    "serve",
                    "--data-dir",
                    str(work / f"replica-{i}"),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--broker",
                    broker,
                    "--online-keys",
                    str(keys),
                    "--database-url",
                    url_db,
                ],
                env={
                    "LINESIDE_FLEET_REPO_DIR": str(work / "shared-repo"),
                    "LINESIDE_FLEET_SHARED_SUBSCRIPTION_GROUP": "fleet",
                    "LINESIDE_FLEET_MQTT_CLIENT_ID": f"fleet-{i}",
                    "LINESIDE_FLEET_ADMIN_TOKEN": ADMIN,
                },
            )
            wait_port(port, 60, child)
            servers.append(child)
            urls.append(f"http://127.0.0.1:{port}")
        for bundle in (b.v1, b.v2):
            _run_cli(
                group,
                f"release-{bundle.name}",
                [
                    *script("fleet"),
                    "release",
                    str(bundle),
                    "--keys",
                    str(keys),
                    "--server",
                    urls[0],
                    "--token",
                    ADMIN,
                ],
                timeout_s=300,
            )
        ids = [f"sim-{i}" for i in range(1, n + 1)]
        t_sim = time.monotonic()
        sim = group.start(
            "edge-sim",
            [
                *script("edge-sim"),
                "fleet",
                "--broker",
                broker,
                "--server",
                urls[-1],
                "--devices",
                str(n),
                "--window",
                f"{window_s:g}",
                "--probation",
                "1",
                "--install-delay",
                "0.3",
            ],
        )
        pg_root = int((Path(_pg_data(db_url)) / "postmaster.pid").read_text().split()[0])
        pids = {"broker": broker_child.pid, "sim": sim.pid} | {f"s{i}": c.pid for i, c in enumerate(servers)}
        _wait(
            lambda: metrics(urls[-1]).get("lineside_devices_online", 0) >= n,
            120 + n * 0.05,
            f"{n} devices online",
            1.0,
        )
        connect_s = time.monotonic() - t_sim
        time.sleep(window_s)  # a first window from everyone before measuring

        # Phase: steady telemetry, ingested by every replica together.
        m0 = [metrics(u) for u in urls]
        meter, pg = CpuMeter(pids).start(), _PgMeter(pg_root).start()
        backlog_max = 0.0
        end = time.monotonic() + steady_s
        while time.monotonic() < end:
            time.sleep(1.0)
            backlog_max = max(backlog_max, sum(metrics(u).get("lineside_ingest_backlog", 0) for u in urls))
        meter.stop()
        pg.stop()
        steady_wall = meter.wall_s
        m1 = [metrics(u) for u in urls]
        shares = [_telemetry(after) - _telemetry(before) for before, after in zip(m0, m1, strict=True)]
        steady = _cpu(meter, pg, replicas)
        rss_steady = [proc_rss_mb(c.pid) for c in servers]

        # Phase: rollout to all N in one stage, created through the last replica.
        with FleetClient(urls[-1], ADMIN, timeout_s=120) as client:
            meter, pg = CpuMeter(pids).start(), _PgMeter(pg_root).start()
            t0 = time.monotonic()
            ro = client.start_rollout(
                f"shapes@{parse_version(b.v2)}", devices=ids, stages="100%", soak="0s", min_gate_frames=1
            )

            def finished() -> bool:
                # /metrics counts rollouts by state from one column: polling the rollout itself
                # (a ~3 MB document at 10,000 devices) every second would load the server we measure.
                return _rollouts_active(urls[-1]) == 0

            _wait(finished, 300 + n * 0.05, f"rollout to {n} devices", 1.0)
            rollout_s = time.monotonic() - t0
            meter.stop()
            pg.stop()
            state = client.rollout(ro["id"])
        passed = sum(1 for d in state.get("devices", {}).values() if d.get("status") == "passed")
        result = {
            "n": n,
            "replicas": replicas,
            "connect_s": connect_s,
            "offered_rate": n / window_s,
            "telemetry_rate": sum(shares) / steady_wall,
            "steady_wall": steady_wall,
            "shares": shares,
            "backlog_max": backlog_max,
            "backlog_end": sum(metrics(u).get("lineside_ingest_backlog", 0) for u in urls),
            "steady_cpu": steady,
            "rollout_s": rollout_s,
            "rollout_state": state.get("state"),
            "passed": passed,
            "rollout_cpu": _cpu(meter, pg, replicas),
            "rss_mb": rss_steady,
            "rss_end_mb": [proc_rss_mb(c.pid) for c in servers],
        }
    dbs.drop(url_db)
    dbs.dispose()
    return result


_ROLLOUTS = re.compile(r'^lineside_rollouts\{state="(running|paused)"\} ([0-9.e+-]+)$', re.M)


def _rollouts_active(url: str) -> int:
    """Rollouts running or paused, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(int(float(v)) for _, v in _ROLLOUTS.findall(text))


def _pg_data(admin_url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url)
    try:
        with engine.connect() as c:
            return str(c.execute(text("SHOW data_directory")).scalar())
    finally:
        engine.dispose()


def _cpu(meter: CpuMeter, pg: _PgMeter, replicas: int) -> dict[str, float]:
    servers = sum(meter.percent(f"s{i}") for i in range(replicas))
    return {
        "servers": servers,
        "pg": pg.percent,
        "broker": meter.percent("broker"),
        "sim": meter.percent("sim"),
    }


def run(ctx: Context) -> Section:
    from tests.pg_support import postgres_server

    section = Section(
        "replicas",
        "Replicas at scale (edge-sim fleet + 1 or 2 fleet serve + PostgreSQL + Mosquitto on this machine)",
        [
            "devices",
            "replicas",
            "all online s",
            "telemetry offered msg/s",
            "ingested msg/s (per replica)",
            "max backlog",
            "rollout → all s",
            "passed",
            "CPU % servers/PostgreSQL/broker/sim (steady)",
            "CPU % servers/PostgreSQL/broker/sim (rollout)",
            "server RSS MiB (each)",
            "server CPU % per 1,000 devices (steady)",
        ],
    )
    n = int(os.environ.get("LINESIDE_BENCH_REPLICAS_DEVICES", "0")) or ctx.scale(200, 10_000)
    # LINESIDE_BENCH_REPLICAS_DEVICES / _WINDOW_S: another size or telemetry rate (default: the agent's 5 s).
    window_s = float(os.environ.get("LINESIDE_BENCH_REPLICAS_WINDOW_S", "0")) or (1.0 if ctx.quick else 5.0)
    steady_s = 3.0 if ctx.quick else 30.0
    _raise_fd_limit(n + 1024)
    with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="replicas-") as t, postgres_server() as db_url:
        tmp = Path(t)
        keys = tmp / "keys"
        with ProcessGroup(tmp / "logs") as group:
            _run_cli(group, "keys-init", [*script("fleet"), "keys", "init", "--out", str(keys)])
        # LINESIDE_BENCH_REPLICAS_R=1 (or 2): measure one configuration only, e.g. while profiling it.
        counts = [int(x) for x in os.environ.get("LINESIDE_BENCH_REPLICAS_R", "1,2").split(",") if x.strip()]
        for replicas in counts:
            try:
                r = run_once(ctx, n, replicas, window_s, steady_s, tmp, keys, db_url)
            except Exception as exc:
                first = str(exc).splitlines()[0][:160]
                section.rows.append(
                    [n, replicas, "-", "-", "-", "-", f"failed: {first}", "-", "-", "-", "-", "-"]
                )
                section.checks.append(
                    Check(f"rollout to {n} devices with {replicas} replica(s)", False, first)
                )
                continue
            s, ro = r["steady_cpu"], r["rollout_cpu"]
            section.rows.append(
                [
                    n,
                    replicas,
                    fmt(r["connect_s"], 1),
                    fmt(r["offered_rate"], 0),
                    f"{fmt(r['telemetry_rate'], 0)} ({' + '.join(fmt(x / r['steady_wall'], 0) for x in r['shares'])})",
                    int(r["backlog_max"]),
                    fmt(r["rollout_s"], 1),
                    f"{r['passed']}/{n} ({r['rollout_state']})",
                    f"{s['servers']:.0f}/{s['pg']:.0f}/{s['broker']:.0f}/{s['sim']:.0f}",
                    f"{ro['servers']:.0f}/{ro['pg']:.0f}/{ro['broker']:.0f}/{ro['sim']:.0f}",
                    " + ".join(fmt(x, 0) for x in r["rss_end_mb"]),
                    fmt(s["servers"] * 1000 / n, 1),
                ]
            )
            section.checks += rollout_checks(
                r,
                n,
                rollout=f"rollout to {n} devices with {replicas} replica(s) completes",
                ingest=f"{replicas} replica(s) ingest {n} devices' telemetry without falling behind",
            )
    section.notes += [
        f"Telemetry: one window per device every {window_s:g} s (the agent's default window is 5 s); steady "
        f"phase {steady_s:g} s. Rollout: one stage (100 %), no soak, gate on >= 1 frame of new-version "
        "telemetry; simulated devices install in 0.3 s and pass probation after 1 s.",
        "CPU is % of one core over the phase from /proc/<pid>/stat; 'servers' is the replicas summed, "
        "PostgreSQL is the postmaster and its backends (a throwaway cluster with fsync off, as the test "
        f"suite runs it). The machine has {os.cpu_count()} cores shared by every process here.",
    ]
    return section
