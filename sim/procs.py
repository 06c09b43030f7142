"""Child processes the demo, the benchmarks and the tests start, and the guarantee that they all stop.

Every child gets its own log file and its own process group, so stopping it
stops whatever it started too. ``ProcessGroup`` is a context manager: on exit,
on an exception and on SIGTERM/SIGINT of the parent, every child still running
gets SIGTERM, then SIGKILL after a grace period.

Also the one home of what every starter of processes needs first: a free loopback port,
the Mosquitto binary, and how to run one of this project's console scripts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

# The project's console scripts and the modules that run them where the script is not installed.
_SCRIPT_MODULES = {
    "edge-agent": "edge_agent.cli",
    "fleet": "fleet_server.cli",
    "edge-sim": "sim.cli",
    "edge-models": "models.cli",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (pick it right before binding it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def console_script(name: str) -> list[str]:
    """How to run one of this project's console scripts: the one next to this interpreter (the
    venv's), else ``python -m`` its module."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", _SCRIPT_MODULES[name]]


@dataclass
class Child:
    """One started process."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, *, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the child's process group and wait; SIGKILL after ``grace_s``."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=grace_s)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, no grace: a crash or a power cut as far as the child can tell."""
        self.stop(grace_s=5.0, sig=signal.SIGKILL)


class ProcessGroup:
    """Starts children and stops every one of them on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._old_handlers: dict[int, object] = {}

    def start(
        self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        log.info("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return child

    def stop_all(self, *, grace_s: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.alive():
                child.stop(grace_s=grace_s)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_all(grace_s=5.0)
        raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self) -> ProcessGroup:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop_all()
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]  # whatever signal.signal returned before
