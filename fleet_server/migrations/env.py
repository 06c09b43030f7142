"""Alembic's environment for the fleet database: run by ``fleet_server.migrate`` with a connection.

``fleet_server.migrate`` passes its open connection (inside its transaction and schema lock) in
``config.attributes["connection"]``; there is no alembic.ini and no URL here.
"""

from __future__ import annotations

from alembic import context

from fleet_server.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through `fleet db upgrade` (fleet_server.migrate), not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    # SQLite cannot ALTER most things: batch mode rebuilds the table (copy, drop, rename) instead.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
