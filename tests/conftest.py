"""Shared fixtures: a real Mosquitto on a free port, the test run's own PostgreSQL, the fleet's database
on both SQLite and PostgreSQL, and ``edge-agent`` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mqtt import Mosquitto, find_mosquitto
from tests.pg_support import PostgresDatabases, postgres_server, require_program

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def mosquitto_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Mosquitto]]:
    """Start any number of brokers: ``mosquitto_factory(persistence=False)``; all killed on teardown."""
    binary = find_mosquitto()
    if binary is None:
        require_program("the mosquitto binary", "install it: `make mosquitto`, or apt-get install mosquitto")
    started: list[Mosquitto] = []

    def make(*, persistence: bool = False) -> Mosquitto:
        broker = Mosquitto(binary, tmp_path_factory.mktemp("mosquitto"), persistence=persistence)
        started.append(broker)
        broker.start()
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A fresh broker: ``.host``, ``.port``, ``.url``, ``.stop()``, ``.start()`` (same port)."""
    return mosquitto_factory()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """The test run's own PostgreSQL cluster (started on first use, stopped at the end of the run)."""
    with postgres_server() as admin_url:
        dbs = PostgresDatabases(admin_url)
        yield dbs
        dbs.dispose()


@pytest.fixture
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A new, empty PostgreSQL database for this test alone; dropped after it."""
    url = postgres_databases.create()
    yield url
    postgres_databases.drop(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The fleet's database URL, once per backend: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def edge_agent_command() -> list[str]:
    """How to run ``edge-agent``: the venv's script if installed, else ``python -m edge_agent.cli``."""
    script = Path(sys.executable).parent / "edge-agent"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "edge_agent.cli"]


class AgentProcess:
    """``edge-agent run --config FILE`` as a subprocess; output goes to ``log_path``."""

    def __init__(
        self, config: Path, log_path: Path, extra_args: list[str], env: dict[str, str] | None
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.args = [*edge_agent_command(), "-v", "run", "--config", str(config), *extra_args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=self.env
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send ``sig`` and wait; SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL, as a crash or power cut would."""
        return self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def edge_agent_process(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start ``edge-agent run --config FILE [extra args]``; every agent gets SIGTERM on teardown.

    On failure, the agents' logs are printed (pytest shows captured stdout).
    """
    agents: list[AgentProcess] = []

    def start(config: Path, *extra_args: str, env: dict[str, str] | None = None) -> AgentProcess:
        log_path = tmp_path / f"agent-{len(agents)}.log"
        agent = AgentProcess(config, log_path, list(extra_args), env).start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
        print(f"--- {agent.log_path} ---\n{agent.log()[-6000:]}")
