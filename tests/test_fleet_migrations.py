"""Schema migrations (Alembic), on SQLite and PostgreSQL: a database made by release 0.1.0 upgrades
with every row intact; `fleet serve` refuses an older schema; a new database starts at the newest
revision; and a table model changed without a migration fails the drift check."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, create_engine, select, text

from fleet_server import migrate
from fleet_server.cli import main as fleet_main
from fleet_server.db import Base, Database
from fleet_server.migrate import SchemaError
from tests.fleet_support import REPO, _script

FIXTURES = Path(__file__).parent / "fixtures" / "fleet-db"
TABLES = ["devices", "telemetry", "events", "rollouts", "alerts", "tokens"]
# Rows in the committed 0.1.0 fixtures (both databases hold the same rows).
FIXTURE_ROWS = {"devices": 3, "telemetry": 6, "events": 3, "rollouts": 1, "alerts": 2, "tokens": 2}


def _rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every fleet table, in primary-key order, JSON columns normalised."""
    engine = create_engine(url)
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as c:
        for name in TABLES:
            table = Base.metadata.tables[name]
            out[name] = [tuple(r) for r in c.execute(select(table).order_by(*table.primary_key.columns))]
    engine.dispose()
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def release_010_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A copy of the committed database that release 0.1.0 made (unversioned, rows in every table)."""
    if request.param == "sqlite":
        path = tmp_path / "fleet.db"
        shutil.copy(FIXTURES / "fleet-0.1.0.sqlite", path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql((FIXTURES / "fleet-0.1.0.pg.sql").read_text())
    engine.dispose()
    return url


def _status(url: str) -> migrate.SchemaStatus:
    engine = create_engine(url)
    with engine.connect() as c:
        st = migrate.status(c)
    engine.dispose()
    return st


def test_upgrading_the_release_010_database_keeps_every_row(
    release_010_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _rows(release_010_db)
    assert {t: len(r) for t, r in before.items()} == FIXTURE_ROWS
    assert _status(release_010_db).state == "unversioned"
    with pytest.raises(SchemaError) as refused:  # what `fleet serve` does first
        Database(release_010_db).create()
    assert refused.value.reason == "schema_behind"

    assert fleet_main(["db", "upgrade", "--database-url", release_010_db]) == 0
    capsys.readouterr()
    assert _status(release_010_db) == migrate.SchemaStatus(
        "current", migrate.head_revision(), migrate.head_revision()
    )
    assert _rows(release_010_db) == before
    db = Database(release_010_db)
    db.create()  # now `fleet serve` starts on it
    with db.engine.connect() as c:
        assert migrate.drift(c, Base.metadata) == []
    db.dispose()
    # Running it again changes nothing.
    assert fleet_main(["db", "upgrade", "--database-url", release_010_db, "--json"]) == 0
    assert '"from_state": "current"' in capsys.readouterr().out
    assert _rows(release_010_db) == before


def test_migrations_build_exactly_the_table_models(db_url: str) -> None:
    """Run every migration on an empty database: the result is what the models describe."""
    db = Database(db_url)
    before, after = migrate.upgrade(db.engine)
    assert (before.state, after.state) == ("empty", "current")
    with db.engine.connect() as c:
        assert migrate.drift(c, Base.metadata) == []
    db.dispose()


def test_a_column_added_without_a_migration_is_caught(db_url: str) -> None:
    """The drift check fails on purpose: a model with one more column than the migrations make."""
    db = Database(db_url)
    migrate.upgrade(db.engine)
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["devices"].append_column(Column("rack", Integer, nullable=True))
    with db.engine.connect() as c:
        diffs = migrate.drift(c, changed)
    assert [(d[0], d[2], d[3].name) for d in diffs] == [("add_column", "devices", "rack")]
    db.dispose()


def test_a_new_database_is_created_at_the_newest_revision(db_url: str) -> None:
    db = Database(db_url)
    db.create()
    db.create()  # a restart: already current
    assert _status(db_url).state == "current"
    with db.engine.connect() as c:
        assert migrate.drift(c, Base.metadata) == []
    db.dispose()


def test_replicas_starting_together_create_the_schema_once(postgres_url: str) -> None:
    """Several `fleet serve` replicas on one empty PostgreSQL database: the advisory lock lets one
    create the tables; the others find them current (no duplicate-table error, one stamp)."""
    from concurrent.futures import ThreadPoolExecutor

    dbs = [Database(postgres_url) for _ in range(4)]
    with ThreadPoolExecutor(len(dbs)) as pool:
        list(pool.map(lambda d: d.create(), dbs))
    with dbs[0].engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert _status(postgres_url).state == "current"
    for d in dbs:
        d.dispose()


def test_a_database_from_a_newer_release_is_refused(db_url: str) -> None:
    db = Database(db_url)
    db.create()
    with db.engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaError) as refused:
        db.create()
    assert refused.value.reason == "schema_newer"
    with pytest.raises(SchemaError) as refused:
        migrate.upgrade(db.engine)
    assert refused.value.reason == "schema_newer"
    db.dispose()


def test_a_foreign_database_is_not_stamped(db_url: str) -> None:
    """Tables, but not the fleet's: `fleet db upgrade` refuses rather than stamping it 0001."""
    db = Database(db_url)
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE something_else (id INTEGER PRIMARY KEY)"))
    with pytest.raises(SchemaError) as refused:
        migrate.upgrade(db.engine)
    assert refused.value.reason == "schema_unrecognised"
    assert _status(db_url).revision is None
    db.dispose()


@pytest.mark.parametrize(
    ("tables", "revision", "state"),
    [
        (set(), None, "empty"),
        ({"alembic_version"}, None, "empty"),
        ({"devices", "alerts"}, None, "unversioned"),
        ({"devices", "alembic_version"}, "0002", "current"),
        ({"devices", "alembic_version"}, "0001", "behind"),
        ({"devices", "alembic_version"}, "0003", "newer"),
    ],
)
def test_classify(tables: set[str], revision: str | None, state: str) -> None:
    assert migrate.classify(tables, revision, {"0001", "0002"}, "0002") == state


@pytest.mark.integration
def test_fleet_serve_refuses_an_older_schema_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FIXTURES / "fleet-0.1.0.sqlite", data / "fleet.db")
    env = {k: v for k, v in os.environ.items() if k != "LINESIDE_FLEET_DATABASE_URL"}  # SQLite in data
    serve = subprocess.run(
        [*_script("fleet", "fleet_server.cli"), "serve", "--data-dir", str(data), "--listen", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert serve.returncode != 0
    lines = serve.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in serve.stderr, serve.stderr
    assert "`fleet db upgrade`" in lines[0]  # the one thing the operator must be told: what to run
    upgrade = subprocess.run(
        [*_script("fleet", "fleet_server.cli"), "db", "upgrade", "--data-dir", str(data), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert _status(f"sqlite:///{data / 'fleet.db'}").state == "current"


def test_migrations_ship_inside_the_package() -> None:
    """An installed `fleet` finds its migrations: they are a package with the template as data."""
    import tomllib

    assert (migrate.MIGRATIONS / "__init__.py").is_file()
    assert (migrate.MIGRATIONS / "versions" / "__init__.py").is_file()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.mako" in data["*"]
