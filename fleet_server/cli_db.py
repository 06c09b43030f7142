"""``fleet db upgrade`` and ``fleet db status``: the fleet database's schema version.

The database is found the way ``fleet serve`` finds it: ``--config`` TOML, then ``LINESIDE_FLEET_*``
environment (``LINESIDE_FLEET_DATABASE_URL``), then ``--database-url``/``--data-dir``; with none,
SQLite under the data directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fleet_server.settings import load_settings
from lineside_common.cli import CommandError, error_line, print_json
from lineside_common.errors import LinesideError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser(
        "db",
        help="the fleet database's schema: upgrade, status",
        description=(
            "The fleet database's schema version (Alembic migrations shipped with this release). "
            "`fleet serve` creates a new database at the newest schema and refuses to start on an "
            "older one: stop the servers, back the database up, run `fleet db upgrade`, start them."
        ),
    )
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    up = dsub.add_parser(
        "upgrade",
        help="upgrade the database to this release's schema",
        description=(
            "Apply every migration the database lacks, in one transaction on PostgreSQL. A database "
            "made before migrations existed is taken as revision 0001. Safe to run again."
        ),
    )
    st = dsub.add_parser(
        "status", help="show the database's schema revision", description="Show the schema revision."
    )
    for p in (up, st):
        p.add_argument("--config", type=Path, help="TOML settings file (the one `fleet serve` uses)")
        p.add_argument("--data-dir", type=Path, help="data directory (its fleet.db when no database URL)")
        p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db")
        p.add_argument("--json", action="store_true", help="print JSON")
    up.set_defaults(func=_guarded(run_upgrade))
    st.set_defaults(func=_guarded(run_status))


def _database(args: argparse.Namespace) -> Any:
    from fleet_server.db import Database

    settings = load_settings(
        args.config,
        env=os.environ,
        overrides={"data_dir": args.data_dir, "database_url": args.database_url},
    )
    url = settings.effective_database_url
    if url.startswith("sqlite") and not settings.data_dir.is_dir() and not settings.database_url:
        raise CommandError(
            f"no fleet data directory at {settings.data_dir}: pass --data-dir or --database-url"
        )
    return Database(url)


def _guarded(func: Any) -> Any:
    """With --json, a failure is JSON on stdout too (plus the one line on stderr)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except LinesideError as exc:
            if not args.json:
                raise
            print_json({"ok": False, "reason": getattr(exc, "reason", type(exc).__name__), "error": str(exc)})
            error_line(str(exc))
            return 1
        except Exception as exc:  # the database cannot be reached: a driver error, not a bug of ours
            from sqlalchemy.exc import SQLAlchemyError

            if not isinstance(exc, SQLAlchemyError):
                raise
            message = f"cannot reach the database: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            if args.json:
                print_json({"ok": False, "reason": "database_unreachable", "error": message})
            error_line(message)
            return 1

    return run


def run_upgrade(args: argparse.Namespace) -> int:
    from fleet_server import migrate

    db = _database(args)
    try:
        before, after = migrate.upgrade(db.engine)
    finally:
        db.dispose()
    if args.json:
        print_json({"ok": True, "from": before.revision, "from_state": before.state, "to": after.revision})
    elif before.state == "current":
        sys.stdout.write(f"already at the newest schema (revision {after.revision})\n")
    else:
        was = before.revision or ("empty" if before.state == "empty" else "unversioned (before migrations)")
        sys.stdout.write(f"upgraded the database schema: {was} → {after.revision}\n")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from fleet_server import migrate

    db = _database(args)
    try:
        with db.engine.connect() as conn:
            st = migrate.status(conn)
    finally:
        db.dispose()
    if args.json:
        print_json({"ok": True, "state": st.state, "revision": st.revision, "head": st.head})
    else:
        sys.stdout.write(f"schema: {st.state} (revision {st.revision or '-'}, this release: {st.head})\n")
    return 0 if st.state in ("current", "empty") else 1
