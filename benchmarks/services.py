"""Processes the benchmarks start: Mosquitto with explicit queue limits, and waiting for ports.

Mosquitto's default ``max_queued_messages 1000`` silently drops QoS 1 bursts to a slow
subscriber, which would make ingest figures look better than they are: the limits are set
explicitly, as tests/conftest.py does.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

from sim.procs import Child, ProcessGroup

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 100000
max_queued_bytes 0
max_inflight_messages 0
max_connections -1
set_tcp_nodelay true
"""


def find_mosquitto() -> str | None:
    """The mosquitto binary, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for cand in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if Path(cand).exists():
            return cand
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, child: Child | None = None) -> None:
    """Poll until 127.0.0.1:``port`` accepts; RuntimeError at the deadline or if ``child`` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def start_mosquitto(group: ProcessGroup, workdir: Path) -> tuple[Child, str]:
    """Start Mosquitto on a free port; (child, mqtt://127.0.0.1:PORT). RuntimeError if not installed."""
    binary = find_mosquitto()
    if binary is None:
        raise RuntimeError("mosquitto is not installed (make mosquitto)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(MOSQUITTO_CONF.format(port=port))
    child = group.start("mosquitto", [binary, "-c", str(conf)])
    wait_port(port, 10, child)
    return child, f"mqtt://127.0.0.1:{port}"


def script(name: str) -> list[str]:
    """How to run a console script of this project: the venv's script, else ``python -m``."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    module = {
        "edge-agent": "edge_agent.cli",
        "fleet": "fleet_server.cli",
        "edge-sim": "sim.cli",
        "edge-models": "models.cli",
    }[name]
    return [sys.executable, "-m", module]
