"""Running as a service: systemd's notify protocol, signals, and the ``status.json`` that ``edge-agent status`` reads.

Nothing here reads the environment: the CLI passes ``$NOTIFY_SOCKET`` and
``$WATCHDOG_USEC`` in, so tests can point the notifier at their own socket.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lineside_common.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


class SystemdNotifier:
    """``sd_notify``: datagrams like ``READY=1`` to the unix socket systemd gave us (no-op without one)."""

    def __init__(self, socket_path: str | None) -> None:
        self.socket_path = socket_path or None
        self._sock: socket.socket | None = None
        if self.socket_path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines; False when there is no socket or it failed (never raises)."""
        if self._sock is None or self.socket_path is None:
            return False
        addr = self.socket_path
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        try:
            self._sock.sendto("\n".join(fields).encode(), addr)
            return True
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.socket_path, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(
    watchdog_usec: str | None, watchdog_pid: str | None, configured_s: float = 0.0
) -> float:
    """How often to ping the watchdog: half of systemd's ``WatchdogSec`` (or of the configured value); 0: off."""
    if configured_s > 0:
        return configured_s / 2
    if not watchdog_usec:
        return 0.0
    if watchdog_pid and watchdog_pid.strip() != str(os.getpid()):
        return 0.0
    try:
        usec = int(watchdog_usec)
    except ValueError:
        return 0.0
    return usec / 2e6 if usec > 0 else 0.0


@contextmanager
def stop_on_signals(
    stop: threading.Event, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
) -> Iterator[None]:
    """While inside, SIGTERM/SIGINT set ``stop`` (a second signal restores the default: kill hard)."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    for s in signals:
        previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Atomically replace ``state_dir/status.json``."""
    atomic_write_bytes(Path(state_dir) / STATUS_FILE, json.dumps(status, indent=2, default=str).encode())


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (signal 0)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else (the service user)
    return True


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last ``status.json`` with ``running`` set from whether its pid is alive; None if there is none."""
    path = Path(state_dir) / STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"running": False, "error": f"unreadable {path}: {exc}"}
    if not isinstance(data, dict):
        return {"running": False, "error": f"{path} is not a JSON object"}
    pid = data.get("pid")
    data["running"] = isinstance(pid, int) and pid_alive(pid) and not data.get("stopped", False)
    return data
