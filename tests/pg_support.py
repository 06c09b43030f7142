"""A throwaway PostgreSQL cluster for the test run, and a missing-program rule for CI.

The test session starts its own cluster (``initdb`` + ``pg_ctl`` from the Debian package's
``/usr/lib/postgresql/*/bin``): its own data directory under a temporary directory, its own port on
127.0.0.1, trust authentication for loopback only, fsync off (it is thrown away), stopped and deleted
at the end. It never touches a server the machine happens to run. PostgreSQL refuses to run as
root, so under root the cluster runs as the ``postgres`` user (or ``nobody``) through ``runuser``.

``LINESIDE_TEST_POSTGRES_URL`` points the tests at an existing server instead (an explicit choice;
each test still gets a database of its own, created and dropped).

``require_program``: under ``CI=true`` a missing program the tests need is a failure, not a skip,
so a broken CI machine never turns into a green run.
"""

from __future__ import annotations

import glob
import importlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.mqtt import free_port, wait_until

INSTALL_HINT = "apt-get install postgresql (make test installs it)"


def in_ci() -> bool:
    """True when the run is CI's (``CI=true``): missing programs fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_program(what: str, hint: str) -> NoReturn:
    """A required program or service is missing: skip on a workstation, fail under ``CI=true``."""
    message = f"{what} is missing ({hint})"
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def require_module(name: str, hint: str) -> Any:
    """Import ``name`` (an extra's package): skip on a workstation without it, fail under ``CI=true``
    (where ``make test`` installs every extra)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"Python package {name} is missing ({hint})"
        if in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def _version(bindir: str) -> tuple[int, ...]:
    return tuple(int(x) for x in Path(bindir).parent.name.split(".") if x.isdigit())


def find_postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` holding initdb and pg_ctl (or ``$LINESIDE_PG_BIN``)."""
    explicit = os.environ.get("LINESIDE_PG_BIN")
    found = glob.glob("/usr/lib/postgresql/*/bin")
    newest_first = sorted(found, key=_version, reverse=True)  # 16 before 15 before 9.6
    candidates = [explicit] if explicit else newest_first
    for c in candidates:
        d = Path(c)
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def _run_as() -> tuple[list[str], int | None, int | None]:
    """The command prefix, uid and gid to run the cluster with (root may not run PostgreSQL)."""
    if os.geteuid() != 0:
        return [], None, None
    for user in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            continue
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", user, "--"], pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


class PostgresCluster:
    """``initdb`` + ``pg_ctl start`` on a free port; ``admin_url`` connects as the superuser."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.prefix, uid, gid = _run_as()
        # Not under pytest's tmp dir: that is 0700 and owned by root, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="lineside-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "lineside"
        self.log_path = self.root / "postgres.log"
        if uid is not None and gid is not None:
            os.chown(self.root, uid, gid)
        self.admin_url = f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cp = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120, cwd=self.root)
        if cp.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({cp.returncode}): {cp.stderr.strip()[-2000:]}")

    def start(self) -> PostgresCluster:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            # A throwaway cluster: durability buys nothing here, and every test creates a database.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "start",
        )
        wait_until(self._answers, 30, what=f"the test PostgreSQL on port {self.port}")
        return self

    def _answers(self) -> bool:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url, connect_args={"connect_timeout": 2})
        try:
            with engine.connect() as c:
                return c.execute(text("SELECT 1")).scalar() == 1
        except Exception:
            return False
        finally:
            engine.dispose()

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """The admin URL of the test run's PostgreSQL: an explicit one, or a cluster started here."""
    explicit = os.environ.get("LINESIDE_TEST_POSTGRES_URL")
    if explicit:
        yield explicit
        return
    bindir = find_postgres_bin()
    if bindir is None:
        require_program("PostgreSQL (initdb, pg_ctl under /usr/lib/postgresql/*/bin)", INSTALL_HINT)
    cluster = PostgresCluster(bindir).start()
    try:
        yield cluster.admin_url
    finally:
        cluster.stop()


class PostgresDatabases:
    """Creates and drops uniquely named databases on the test run's PostgreSQL."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine

        self.admin_url = admin_url
        self.engine = create_engine(
            admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
        )

    def create(self) -> str:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = f"lineside_test_{uuid.uuid4().hex[:12]}"
        with self.engine.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with self.engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def dispose(self) -> None:
        self.engine.dispose()
