"""5. Fleet scale: ``edge-sim fleet --devices N`` against one ``fleet serve`` and one Mosquitto.

Every piece is a real process started through its CLI: Mosquitto (explicit queue limits),
``fleet serve`` (uvicorn, SQLite, TUF repository with ``fleet keys init`` keys), two releases
uploaded with ``fleet release``, and ``edge-sim fleet``: N lightweight devices that speak the
agent's MQTT protocol (retained state + Last Will, telemetry windows with seq, deploy/rollback
lifecycle events) and check the release against the server's TUF ``targets.json``, but skip
inference and the download itself.

Per N: time for every device to show online; telemetry ingest at the fleet's steady rate (one
window per device per ``window`` seconds) against what was offered, with the ingest backlog
sampled; a rollout of v2 to all N devices in one stage (no soak) timed from the API call to
``succeeded``; CPU (% of one core) of server, broker and simulator in each phase, and the
server's RSS. The process nearest 100 % of a core is the bottleneck: each is one Python (or C)
event loop, so one core is its ceiling on this machine.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Check, Context, CpuMeter, Section, fmt, proc_rss_mb, rollout_checks
from benchmarks.services import free_port, script, start_mosquitto, wait_port
from fleet_server.client import FleetClient
from sim.procs import Child, ProcessGroup

_METRIC = re.compile(r'^(lineside_[a-z_]+)(?:\{kind="([a-z_]+)"\})? ([0-9.e+-]+)$', re.M)


def metrics(url: str) -> dict[str, float]:
    """/metrics as {name or name:kind: value}."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(f"{n}:{k}" if k else n): float(v) for n, k, v in _METRIC.findall(text)}


def _ingested(m: dict[str, float]) -> float:
    return sum(
        v
        for k, v in m.items()
        if k.startswith("lineside_ingest_messages_total:") and not k.endswith(":rejected")
    )


def _telemetry(m: dict[str, float]) -> float:
    return m.get("lineside_ingest_messages_total:telemetry_new", 0.0) + m.get(
        "lineside_ingest_messages_total:telemetry_dup", 0.0
    )


def _run_cli(group: ProcessGroup, name: str, argv: list[str], timeout_s: float = 120) -> str:
    child = group.start(name, argv)
    try:
        child.popen.wait(timeout=timeout_s)
    except Exception:
        child.stop()
        raise
    if child.popen.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{child.log_tail()}")
    return child.log_path.read_text()


def _wait(pred: Any, timeout_s: float, what: str, every_s: float = 0.25) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(every_s)
    return time.monotonic() - t0


def scale_once(
    ctx: Context,
    n: int,
    window_s: float,
    steady_s: float,
    tmp: Path,
    keys: Path,
    group: ProcessGroup,
    broker_pid: int,
    broker: str,
) -> dict[str, Any]:
    """One fleet size: server + simulator fresh, measured in three phases."""
    b = ctx.bundles()
    data = tmp / f"server-{n}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server: Child = group.start(
        f"fleet-serve-{n}",
        [
            *script("fleet"),
            "serve",
            "--data-dir",
            str(data),
            "--listen",
            f"127.0.0.1:{port}",
            "--broker",
            broker,
            "--online-keys",
            str(keys),
        ],
    )
    wait_port(port, 60, server)
    token = (data / "admin.token").read_text().strip()
    for bundle in (b.v1, b.v2):
        _run_cli(
            group,
            f"release-{n}-{bundle.name}",
            [
                *script("fleet"),
                "release",
                str(bundle),
                "--keys",
                str(keys),
                "--server",
                url,
                "--token",
                token,
            ],
        )
    ids = [f"sim-{i}" for i in range(1, n + 1)]
    t_sim = time.monotonic()
    sim = group.start(
        f"edge-sim-{n}",
        [
            *script("edge-sim"),
            "fleet",
            "--broker",
            broker,
            "--server",
            url,
            "--devices",
            str(n),
            "--window",
            f"{window_s:g}",
            "--fps",
            "20",
            "--probation",
            "1",
            "--install-delay",
            "0.3",
        ],
    )
    pids = {"server": server.pid, "broker": broker_pid, "sim": sim.pid}
    connect_s = _wait(
        lambda: metrics(url).get("lineside_devices_online", 0) >= n, 60 + n * 0.2, f"{n} devices online", 0.5
    )
    connect_s = time.monotonic() - t_sim
    time.sleep(min(2.0, steady_s))  # a first window from everyone before measuring

    # Phase: steady telemetry.
    m0 = metrics(url)
    meter = CpuMeter(pids).start()
    backlog_max = 0.0
    end = time.monotonic() + steady_s
    while time.monotonic() < end:
        time.sleep(0.5)
        backlog_max = max(backlog_max, metrics(url).get("lineside_ingest_backlog", 0))
    meter.stop()
    m1 = metrics(url)
    telemetry_rate = (_telemetry(m1) - _telemetry(m0)) / meter.wall_s
    steady = {k: meter.percent(k) for k in pids}
    rss_steady = proc_rss_mb(server.pid)

    # Phase: rollout to all N in one stage.
    with FleetClient(url, token, timeout_s=60) as client:
        meter = CpuMeter(pids).start()
        t0 = time.monotonic()
        ro = client.start_rollout(
            f"shapes@{parse_version(b.v2)}", devices=ids, stages="100%", soak="0s", min_gate_frames=1
        )
        rid = ro["id"]
        state: dict[str, Any] = {}

        def finished() -> bool:
            nonlocal state
            state = client.rollout(rid)
            return state["state"] not in ("running", "paused")

        _wait(finished, 120 + n * 0.5, f"rollout to {n} devices", 0.2)
        rollout_s = time.monotonic() - t0
        meter.stop()
        passed = sum(1 for d in state.get("devices", {}).values() if d.get("status") == "passed")
    rollout_cpu = {k: meter.percent(k) for k in pids}
    m2 = metrics(url)
    rss = proc_rss_mb(server.pid)
    sim.stop()
    server.stop()
    return {
        "n": n,
        "connect_s": connect_s,
        "offered_rate": n / window_s,
        "telemetry_rate": telemetry_rate,
        "ingested_total_rate": (_ingested(m1) - _ingested(m0)) / steady_s,
        "backlog_max": backlog_max,
        "backlog_end": m2.get("lineside_ingest_backlog", 0),
        "steady_cpu": steady,
        "rollout_s": rollout_s,
        "rollout_state": state.get("state"),
        "passed": passed,
        "rollout_cpu": rollout_cpu,
        "rss_steady_mb": rss_steady,
        "rss_mb": rss,
    }


def parse_version(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["version"])


def _bottleneck(cpu: dict[str, float]) -> str:
    name, top = max(cpu.items(), key=lambda kv: kv[1])
    return f"{name} ({top:.0f} % of a core)"


def run(ctx: Context) -> Section:
    section = Section(
        "fleet",
        "Fleet scale (edge-sim fleet + fleet serve + Mosquitto on this machine)",
        [
            "devices",
            "all online s",
            "telemetry offered msg/s",
            "ingested msg/s",
            "max backlog",
            "rollout → all s",
            "passed",
            "CPU % server/broker/sim (steady)",
            "CPU % server/broker/sim (rollout)",
            "server RSS MiB",
            "busiest (rollout)",
        ],
    )
    sizes = [20] if ctx.quick else [100, 1000]
    window_s = 0.5 if ctx.quick else 1.0
    steady_s = 2.0 if ctx.quick else 15.0
    with (
        tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="fleet-") as t,
        ProcessGroup(Path(t) / "logs") as group,
    ):
        tmp = Path(t)
        broker_child, broker = start_mosquitto(group, tmp / "mosquitto")
        keys = tmp / "keys"
        _run_cli(group, "keys-init", [*script("fleet"), "keys", "init", "--out", str(keys)])
        for n in sizes:
            try:
                r = scale_once(ctx, n, window_s, steady_s, tmp, keys, group, broker_child.pid, broker)
            except Exception as exc:
                section.rows.append(
                    [
                        n,
                        "-",
                        "-",
                        "-",
                        "-",
                        f"failed: {str(exc).splitlines()[0][:120]}",
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                    ]
                )
                section.checks.append(
                    Check(
                        f"rollout to {n} simulated devices completes", False, str(exc).splitlines()[0][:200]
                    )
                )
                for child in group.children[-3:]:
                    section.notes.append(f"{child.name} log tail: {child.log_tail(5)}")
                continue
            s, ro = r["steady_cpu"], r["rollout_cpu"]
            section.rows.append(
                [
                    n,
                    fmt(r["connect_s"], 1),
                    fmt(r["offered_rate"], 0),
                    fmt(r["telemetry_rate"], 0),
                    int(r["backlog_max"]),
                    fmt(r["rollout_s"], 1),
                    f"{r['passed']}/{n} ({r['rollout_state']})",
                    f"{s['server']:.0f}/{s['broker']:.0f}/{s['sim']:.0f}",
                    f"{ro['server']:.0f}/{ro['broker']:.0f}/{ro['sim']:.0f}",
                    fmt(r["rss_mb"], 0),
                    _bottleneck(ro),
                ]
            )
            section.checks += rollout_checks(
                r,
                n,
                rollout=f"rollout to {n} simulated devices completes",
                ingest=f"server ingests {n} devices' telemetry without falling behind",
            )
        for n in sizes:
            cap = ingest_capacity(tmp / "ingest", n, 2 if ctx.quick else 6)
            section.notes.append(
                f"Server ingest path alone ({n} distinct devices, in process, SQLite, batches of 500, same run): "
                f"{cap['msgs_per_s']:.0f} msg/s, {cap['cpu_ms_per_msg']:.2f} ms CPU per message, so "
                f"{n / window_s:.0f} msg/s needs ~{cap['cpu_ms_per_msg'] * n / window_s / 10:.0f} % of a core "
                f"for the server's single ingest thread (parse + insert + a per-device registry touch per batch)."
            )
        for row, n in zip(section.rows, sizes, strict=False):
            if isinstance(row[3], str) and row[3] != "-":
                ingested = float(row[3].replace(",", ""))
                offered = n / window_s
                if ingested < 0.9 * offered:
                    section.notes.append(
                        f"Bottleneck at {n} devices: the fleet server's ingest fell behind by "
                        f"{100 * (1 - ingested / offered):.0f} % ({ingested:.0f} of {offered:.0f} msg/s; backlog "
                        f"max {row[4]}), with the server at {row[7].split('/')[0]} % of a core, the broker at "
                        f"{row[7].split('/')[1]} % and the simulator at {row[7].split('/')[2]} %. Events "
                        "wait behind telemetry in the same ingest queue, which is what stretches the rollout."
                    )
    section.notes += [
        f"Telemetry: one window per device every {window_s:g} s; steady phase {steady_s:g} s. "
        "Rollout: one stage (100 %), no soak, gate on >= 1 frame of new-version telemetry; the simulated "
        "devices install in 0.3 s and pass probation after 1 s, so the rollout time is the server's and "
        "the protocol's overhead plus ~1.3 s.",
        "CPU is % of one core over the phase from /proc/<pid>/stat (the machine has "
        f"{__import__('os').cpu_count()} cores shared by all three). The simulated devices are one "
        "process (select-multiplexed paho clients), so its CPU is the simulator's cost, not a device's.",
    ]
    return section


def ingest_capacity(tmp: Path, devices: int, batches: int) -> dict[str, float]:
    """The server's ingest path alone, in process: ``Ingest.write_batch`` on SQLite.

    Batches of 500 telemetry messages (the server's ``ingest_batch_max``), built by simulated
    devices, from ``devices`` distinct devices; messages/s with and without MQTT in front: the
    ceiling of the server's one ingest thread on this machine.
    """
    from edge_agent.messages import Topics, dump
    from fleet_server.db import Database
    from fleet_server.ingest import Inbound, Ingest
    from sim.fleet import SimDevice, SimOptions

    tmp.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{tmp / f'ingest-{devices}.db'}")
    db.create()
    ingest = Ingest(db, Topics())
    opts = SimOptions()
    sims = [SimDevice(f"sim-{i}", opts, lambda t, p, r: None) for i in range(devices)]
    topics = Topics(opts.topic_root)
    now = time.monotonic()
    ingest.write_batch([Inbound(topics.device(d.device_id, "state"), dump(d.state(now=now))) for d in sims])
    batch_size = 500
    msgs: list[list[Inbound]] = []
    for b in range(batches):
        batch = []
        for i in range(batch_size):
            d = sims[(b * batch_size + i) % devices]
            batch.append(Inbound(topics.device(d.device_id, "telemetry"), dump(d.telemetry(now))))
        msgs.append(batch)
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in msgs:
        ingest.write_batch(batch)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    db.dispose()
    n = batch_size * batches
    return {"msgs_per_s": n / wall, "cpu_ms_per_msg": 1000 * cpu / n}
