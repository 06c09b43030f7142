"""Running as a service: sd_notify, the systemd unit, status.json, clear CLI errors, memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.service import SystemdNotifier, pid_alive, read_status, watchdog_interval_s, write_status
from tests.conftest import AgentProcess
from tests.mqtt import wait_until
from tests.pg_support import require_program

REPO = Path(__file__).resolve().parent.parent
EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        n = SystemdNotifier(path)
        assert n.ready("serving") and n.watchdog()
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.close()
    finally:
        sock.close()
    assert not SystemdNotifier(None).ready()
    assert not SystemdNotifier(str(tmp_path / "gone.sock")).watchdog()  # never raises


def test_watchdog_interval() -> None:
    assert watchdog_interval_s("30000000", None) == 15.0
    assert watchdog_interval_s("30000000", "1") == 0.0 or os.getpid() == 1
    assert watchdog_interval_s(None, None) == 0.0
    assert watchdog_interval_s("junk", None) == 0.0
    assert watchdog_interval_s(None, None, configured_s=4.0) == 2.0


def test_status_file_roundtrip(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    write_status(tmp_path, {"pid": os.getpid(), "frames": 3})
    st = read_status(tmp_path)
    assert st is not None and st["running"] and st["frames"] == 3
    write_status(tmp_path, {"pid": 2**22 + 12345, "frames": 3})
    st = read_status(tmp_path)
    assert st is not None and not st["running"]
    assert not pid_alive(0)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        require_program("systemd-analyze", "apt-get install systemd")
    text = (REPO / "deploy" / "systemd" / "lineside-agent.service").read_text()
    for key in ("Type=notify", "WatchdogSec=", "ProtectSystem=strict", "ReadWritePaths=/var/lib/lineside",
                "NoNewPrivileges=yes", "PrivateTmp=yes", "Restart=on-failure", "User=lineside"):  # fmt: skip
        assert key in text, key
    # verify checks that ExecStart exists: point it at this checkout's script.
    unit = tmp_path / "lineside-agent.service"
    unit.write_text(text.replace("/opt/lineside/.venv/bin/edge-agent", EDGE_AGENT))
    r = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    if r.returncode != 0 and ("Failed to connect" in r.stderr or "System has not been booted" in r.stderr):
        pytest.skip(f"systemd-analyze cannot run here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    assert "lineside-agent.service" not in r.stderr, r.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGE_AGENT, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('device_id = "r"\n[source]\nuri = "x"\n[telemetry]\nwindow_s = -1\n')
    r = run_cli("run", "--config", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "telemetry.window_s" in r.stderr


def test_bad_model_file_is_one_clear_line(tmp_path: Path) -> None:
    from models.synthetic import make_bundle

    bundle = make_bundle(tmp_path / "b")
    (bundle / "model.onnx").write_bytes(b"garbage")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "r"\nstate_dir = "{tmp_path / "s"}"\nbundle = "{bundle}"\n[source]\nuri = "0"\n'
    )
    r = run_cli("run", "--config", str(cfg))
    assert r.returncode == 1 and "error:" in r.stderr and "cannot load" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_source_is_one_clear_line(tmp_path: Path) -> None:
    from models.synthetic import make_bundle

    bundle = make_bundle(tmp_path / "b")
    r = run_cli("run", "--device-id", "r", "--state-dir", str(tmp_path / "s"), "--bundle", str(bundle),
                "--source", str(tmp_path / "nope"))  # fmt: skip
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_status_without_agent(tmp_path: Path) -> None:
    r = run_cli("status", "--state-dir", str(tmp_path))
    assert r.returncode == 3 and "no status.json" in r.stderr
    r = run_cli("status", "--json", "--state-dir", str(tmp_path))
    assert r.returncode == 3 and json.loads(r.stdout)["running"] is False


@pytest.mark.integration
def test_sigterm_with_systemd_notify_and_memory(
    tmp_path: Path, edge_agent_process: Callable[..., AgentProcess]
) -> None:
    """READY=1, WATCHDOG=1 and STOPPING=1 reach $NOTIFY_SOCKET; SIGTERM exits 0; RSS stays under 200 MB."""
    from models.synthetic import make_bundle

    bundle = REPO / "models" / "releases" / "shapes-1.0.0"
    if not (bundle / "model.onnx").is_file():
        bundle = make_bundle(tmp_path / "b")
    rec = tmp_path / "rec"
    subprocess.run([str(Path(sys.executable).parent / "edge-sim"), "record", "--out", str(rec), "--frames", "30",
                    "--fps", "30", "--seed", "2"], check=True, capture_output=True, cwd=REPO)  # fmt: skip
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "svc"\nstate_dir = "{tmp_path / "s"}"\nbundle = "{bundle}"\nwatchdog_s = 0.4\n'
        f'[source]\nuri = "{rec}"\nloop = true\n[broker]\nurl = "mqtt://127.0.0.1:1"\n[telemetry]\nwindow_s = 0.5\n'
    )
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    got: list[str] = []
    try:
        agent = edge_agent_process(cfg, env={"NOTIFY_SOCKET": path})
        while not any("WATCHDOG=1" in g for g in got):
            got.append(sock.recv(4096).decode())
        assert got[0].startswith("READY=1")
        wait_until(lambda: (read_status(tmp_path / "s") or {}).get("frames", 0) >= 30, 30)
        assert agent.proc is not None
        rss_kb = int(next(line.split()[1] for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines()
                          if line.startswith("VmRSS:")))  # fmt: skip
        print(f"agent RSS with {bundle.name} loaded, serving: {rss_kb / 1024:.1f} MiB")
        assert rss_kb < 200 * 1024
        assert agent.stop(signal.SIGTERM) == 0
        while not any("STOPPING=1" in g for g in got):
            got.append(sock.recv(4096).decode())
    finally:
        sock.close()
    st = read_status(tmp_path / "s")
    assert st is not None and not st["running"] and st["frames"] >= 30


def test_backoff_is_capped_exponential_with_jitter() -> None:
    from lineside_common.retry import Backoff

    lo = Backoff(0.5, 8.0, rng=lambda: 0.0)
    hi = Backoff(0.5, 8.0, rng=lambda: 1.0)
    lows = [lo.next_delay() for _ in range(8)]
    highs = [hi.next_delay() for _ in range(8)]
    assert highs == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert lows == [h / 2 for h in highs]
    hi.reset()
    assert hi.next_delay() == 0.5
