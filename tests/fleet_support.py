"""Helpers for the fleet tests: signed releases, `fleet serve` and `edge-sim fleet` as subprocesses.
(What those processes are — their command lines, keys, health — is sim/rig.py, shared with the demo.)
(PostgreSQL: the ``postgres_url`` and ``db_url`` fixtures in tests/conftest.py.)

Re-pointing the integration tests at real agents: ``FleetServer`` and ``release()`` do not care
who the devices are; replace ``SimFleetProcess`` with ``edge_agent_process`` agents configured
with the server's ``/tuf`` URLs and the keys' root.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from sim import rig
from sim.procs import console_script, free_port
from tests.mqtt import wait_until

REPO = Path(__file__).resolve().parent.parent


def _script(name: str, module: str) -> list[str]:
    """A console script's command line (``module`` names it for the reader; sim.procs knows it)."""
    return console_script(name)


def make_keys(tmp: Path) -> Path:
    """Fresh TUF keys in ``tmp/keys``."""
    return rig.make_keys(tmp / "keys")


def signed_release(keys: Path, bundle: Path, current: bytes | None) -> tuple[bytes, dict[str, bytes]]:
    """What `fleet release` sends: the new targets metadata signed with the offline key, and files."""
    from tuf.api.metadata import Metadata, Targets

    from fleet_server import keys as keymod
    from fleet_server.tuf_repo import build_release_targets

    cur = Metadata[Targets].from_bytes(current) if current else None
    return build_release_targets(
        bundle, targets_signer=keymod.load_signer(keys, "targets"), current=cur, expiry_days=30
    )


def make_bundle(tmp: Path, version: str, name: str = "shapes") -> Path:
    from models.synthetic import make_bundle as mk

    out = tmp / f"bundle-{name}-{version}"
    mk(out, name=name, version=version)
    return out


# -- processes ----------------------------------------------------------------------------------


class FleetServer:
    """`fleet serve` as a subprocess on a free port; restartable (same data dir, same port)."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        keys: Path,
        *,
        database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "fleet-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "fleet-serve.log"
        self.args = rig.fleet_serve_argv(
            data_dir=self.data_dir,
            port=self.port,
            online_keys=keys,
            broker_url=broker_url,
            database_url=database_url,
            verbose=True,
        )
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # Short timings so the tests run in seconds; the defaults are for a plant.
            "LINESIDE_FLEET_CONTROLLER_TICK_S": "0.2",
            "LINESIDE_FLEET_MQTT_CLIENT_ID": f"fleet-{uuid.uuid4().hex[:8]}",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> FleetServer:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=self.env
        )
        log.close()

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"fleet serve exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            return rig.server_healthy(self.url, require_mqtt=True)

        wait_until(healthy, timeout, what="fleet server healthy and connected to the broker")
        return self

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the `fleet` CLI against this server."""
        env = {**os.environ, "LINESIDE_SERVER": self.url, "LINESIDE_TOKEN": self.token}
        cp = subprocess.run(
            [*_script("fleet", "fleet_server.cli"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=60,
        )
        if check and cp.returncode != 0:
            raise AssertionError(f"fleet {' '.join(args)} → {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
        return cp

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)


class SimFleetProcess:
    """`edge-sim fleet` as a subprocess."""

    def __init__(self, workdir: Path, broker_url: str, *args: str) -> None:
        self.log_path = workdir / f"sim-{uuid.uuid4().hex[:6]}.log"
        self.args = [*_script("edge-sim", "sim.cli"), "fleet", "--broker", broker_url, *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SimFleetProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    return wait_until(predicate, timeout, interval=0.2, what=what)


__all__ = [
    "FleetServer",
    "SimFleetProcess",
    "make_bundle",
    "make_keys",
    "signed_release",
    "time",
]
