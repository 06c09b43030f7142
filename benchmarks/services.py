"""Processes the benchmarks start: Mosquitto with explicit queue limits, and waiting for ports.

Mosquitto's default ``max_queued_messages 1000`` silently drops QoS 1 bursts to a slow
subscriber, which would make ingest figures look better than they are: the limits are set
explicitly, as tests/conftest.py does.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from sim.procs import Child, ProcessGroup, console_script, find_mosquitto, free_port

__all__ = ["find_mosquitto", "free_port", "script", "start_mosquitto", "wait_port"]

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
    return console_script(name)
