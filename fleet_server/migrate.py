"""The fleet database's schema version: Alembic migrations shipped in ``fleet_server/migrations``.

Rules (what ``fleet serve`` and ``fleet db upgrade`` do with a database):

- **empty** (none of our tables): ``fleet serve`` creates the tables at the newest schema and stamps it
  (``prepare``); ``fleet db upgrade`` runs every migration from the first.
- **current** (stamped at the newest revision): used as it is.
- **behind** (stamped at an older revision, or unversioned: made by a release before migrations
  existed, whose schema is revision 0001): ``fleet serve`` refuses to start and says to run
  ``fleet db upgrade``; the upgrade stamps an unversioned database at 0001 and runs the rest.
- **newer** (a revision this release does not know: a newer release wrote it): both refuse.

On PostgreSQL, several ``fleet serve`` replicas may start at once on the same empty database: creation
and upgrades hold a transaction-scoped advisory lock, so one creates and the others see it created.

The pure part (``classify``) decides from what the database says; the rest is the thin shell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, Engine

from lineside_common.errors import LocalError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The revision whose schema is what releases before migrations created (``create_all``).
BASELINE = "0001"
VERSION_TABLE = "alembic_version"
# Serialises schema creation and upgrades between replicas (PostgreSQL advisory lock key).
SCHEMA_LOCK_ID = 0x4C494E46

SchemaState = Literal["empty", "current", "behind", "unversioned", "newer"]
SchemaReason = Literal["schema_behind", "schema_newer", "schema_unrecognised"]


class SchemaError(LocalError):
    """The database's schema is not the one this release runs on; ``reason`` says how."""

    def __init__(self, message: str, *, reason: SchemaReason) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands: its state, its revision (None: unversioned or empty), the head."""

    state: SchemaState
    revision: str | None
    head: str


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, without an ini file: the packaged migrations, and our connection."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise SchemaError("no migrations found in the package", reason="schema_unrecognised")
    return head


def classify(tables: set[str], revision: str | None, known: set[str], head: str) -> SchemaState:
    """Pure: the state of a database from its table names, its stamped revision and our revisions."""
    ours = tables - {VERSION_TABLE}
    if revision is None:
        return "unversioned" if ours else "empty"
    if revision == head:
        return "current"
    return "behind" if revision in known else "newer"


def status(conn: Connection) -> SchemaStatus:
    """Read the database's tables and stamped revision and classify them."""
    scripts = script_directory()
    head = head_revision()
    tables = set(inspect(conn).get_table_names())
    revision = MigrationContext.configure(conn).get_current_revision() if VERSION_TABLE in tables else None
    known = {r.revision for r in scripts.walk_revisions()}
    return SchemaStatus(classify(tables, revision, known, head), revision, head)


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_ID})


def _baseline_tables() -> set[str]:
    """The tables revision 0001 creates (what an unversioned database must hold to be stamped 0001)."""
    return {"devices", "telemetry", "events", "rollouts", "alerts", "tokens"}


def prepare(engine: Engine, metadata: MetaData) -> SchemaStatus:
    """``fleet serve``'s start: create a new database at the newest schema, or check it is current.

    Raises ``SchemaError`` (one line, says what to run) on an older or newer schema.
    """
    with engine.begin() as conn:
        _lock(conn)
        st = status(conn)
        if st.state == "empty":
            metadata.create_all(conn)
            MigrationContext.configure(conn).stamp(script_directory(), "head")
            log.info("new database created at schema revision %s", st.head)
            return SchemaStatus("current", st.head, st.head)
    if st.state == "current":
        return st
    raise _refusal(st)


def _refusal(st: SchemaStatus) -> SchemaError:
    if st.state == "newer":
        return SchemaError(
            f"the database schema is at revision {st.revision}, newer than this release knows "
            f"(newest here: {st.head}): run a newer Lineside release",
            reason="schema_newer",
        )
    if st.revision is None:
        where = "the database has no schema version (made before migrations)"
    else:
        where = f"the database schema is at revision {st.revision}, this release needs {st.head}"
    return SchemaError(
        f"{where}: run `fleet db upgrade` (with the same --database-url or --config) first",
        reason="schema_behind",
    )


def upgrade(engine: Engine) -> tuple[SchemaStatus, SchemaStatus]:
    """``fleet db upgrade``: bring the database to the newest revision; returns (before, after)."""
    with engine.begin() as conn:
        _lock(conn)
        before = status(conn)
        if before.state == "newer":
            raise _refusal(before)
        cfg = alembic_config(conn)
        if before.state == "unversioned":
            tables = set(inspect(conn).get_table_names())
            missing = _baseline_tables() - tables
            if missing:
                raise SchemaError(
                    f"the database holds tables but not the fleet's ({', '.join(sorted(missing))} missing): "
                    "is the URL right?",
                    reason="schema_unrecognised",
                )
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, "head")
        after = status(conn)
    return before, after


def drift(conn: Connection, metadata: MetaData) -> list[Any]:
    """What differs between the table models (``metadata``) and the database's schema (empty: none).

    A table model changed without a migration shows up here once the migrations are applied.
    """
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    diffs: list[Any] = compare_metadata(ctx, metadata)
    return [d for d in diffs if not _is_version_table(d)]


def _is_version_table(diff: Any) -> bool:
    # compare_metadata reports alembic's own table as "not in the models".
    return isinstance(diff, tuple) and len(diff) > 1 and getattr(diff[1], "name", None) == VERSION_TABLE


def new_revision(message: str, url: str) -> None:
    """For developers: write a migration for the model changes, autogenerated against ``url``

    (a scratch database that ``upgrade`` brought to the current head). Review what it wrote.
    """
    from sqlalchemy import create_engine

    engine = create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        cfg = alembic_config(conn)
        number = 1 + max(int(r.revision) for r in script_directory().walk_revisions())
        command.revision(cfg, message=message, autogenerate=True, rev_id=f"{number:04d}", head="head")
    engine.dispose()


def _main() -> None:  # pragma: no cover - a developer's tool
    import argparse
    import tempfile

    p = argparse.ArgumentParser(
        prog="python -m fleet_server.migrate",
        description="Write a new migration for changed table models (autogenerated; review it).",
    )
    p.add_argument("message", help="what the migration does, e.g. 'add dead letters'")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        new_revision(args.message, f"sqlite:///{tmp}/scratch.db")


if __name__ == "__main__":  # pragma: no cover
    _main()
