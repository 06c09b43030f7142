"""The fleet's database: SQLAlchemy 2.x ORM, SQLite by default, PostgreSQL by URL — the same code.

The schema is versioned by Alembic migrations (``fleet_server/migrations``, rules in
``fleet_server.migrate``): ``Database.create`` makes a new database at the newest schema and refuses
an older one (run ``fleet db upgrade``). A change to a table model here needs a migration; the
tests fail without one (tests/test_fleet_migrations.py). Telemetry and events are unique by
(device, seq): ingest is insert-or-ignore, so a message delivered twice (QoS 1 redelivery,
a server restart before the ack) is stored once. A rollout's state machine is persisted as
one JSON document (``RolloutRow.doc``) written in the same transaction as its state column.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

# One id for the PostgreSQL advisory lock that elects the single rollout controller.
CONTROLLER_LOCK_ID = 0x4C494E45
# One id for the advisory lock that lets one replica at a time publish to the shared TUF repository.
PUBLISH_LOCK_ID = 0x4C494E46


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    state_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    device_class: Mapped[str] = mapped_column(String(64), default="")
    active_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    active_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    probation: Mapped[bool] = mapped_column(Boolean, default=False)
    execution_provider: Mapped[str] = mapped_column(String(64), default="")
    group: Mapped[str | None] = mapped_column("group_name", String(64), nullable=True, index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TelemetryRow(Base):
    __tablename__ = "telemetry"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_s: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    confidence_p50: Mapped[float] = mapped_column(Float, default=0.0)
    confidence_mean: Mapped[float] = mapped_column(Float, default=0.0)
    low_confidence: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms_p99: Mapped[float] = mapped_column(Float, default=0.0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_events_device_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cmd_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    rollout_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)


class AlertRow(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rollout_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Idempotency: one alert per source event (device, seq) or per rollout halt.
    dedup_key: Mapped[str | None] = mapped_column(String(160), nullable=True, unique=True)


class DeadLetterRow(Base):
    """A message the database refused (not a transient failure): kept apart so the rest is ingested.

    One row per distinct (topic, payload): a poison message redelivered (QoS 1, a restart before
    the ack) is stored once. The payload is kept as bytes, exactly as it arrived.
    """

    __tablename__ = "dead_letters"
    __table_args__ = (UniqueConstraint("topic", "payload_sha256", name="uq_dead_letters_topic_payload"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # Text, not String(64): a value too long for the other tables may be why it is here.
    device_id: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    topic: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))  # a code: integrity, data, unbindable
    detail: Mapped[str] = mapped_column(Text, default="")  # the database's words, for a person
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dead_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SampleRow(Base):
    """A frame a device kept for retraining: its metadata, and the content address of its JPEG.

    Unique by (device, sample id): a device resending a sample (a cut upload, a restart before the
    answer) stores nothing new. The JPEG lives under the data directory as ``samples/ab/<sha256>``;
    two samples with the same bytes share one file.
    """

    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("device_id", "sample_id", name="uq_samples_device_sample"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    sample_id: Mapped[str] = mapped_column(String(64))
    decision_id: Mapped[str] = mapped_column(String(64))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(128), index=True)  # the model's label for the frame
    confidence: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    image_bytes: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What the frame really shows, from a person or a labelling tool (issue 17); None: unlabelled.
    true_label: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    labelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    labelled_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (API) do not block the ingest writer; busy_timeout instead of "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class RawJSON(str):
    """JSON text already serialised (e.g. pydantic's ``model_dump_json``), bound to a JSON column
    as it is instead of being dumped again: a 10,000-device rollout document is ~3 MB, and
    ``json.dumps`` of its dict form costs ten times what pydantic's serialiser does."""


def _json_serializer(value: Any) -> str:
    return str(value) if isinstance(value, RawJSON) else json.dumps(value)


class Database:
    """An engine plus a session factory; ``session()`` is a transaction (commit or roll back)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "json_serializer": _json_serializer}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def create(self) -> None:
        """Make a new (empty) database at the newest schema, stamped; check an existing one is current.

        Raises ``fleet_server.migrate.SchemaError`` on an older schema (run ``fleet db upgrade``) or
        a newer one.
        """
        from fleet_server import migrate  # migrate's Alembic environment imports this module

        migrate.prepare(self.engine, Base.metadata)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def insert_ignore(self, s: Session, table: Any, rows: Sequence[dict[str, Any]], keys: list[str]) -> int:
        """Insert rows, skipping those whose ``keys`` already exist; returns how many were new."""
        if not rows:
            return 0
        mod: Any = postgresql if self.dialect == "postgresql" else sqlite
        stmt = mod.insert(table).on_conflict_do_nothing(index_elements=keys).returning(table.c[keys[0]])
        # executemany form: one cached statement, batched by SQLAlchemy's "insertmanyvalues";
        # RETURNING lists only the rows really inserted (rowcount is -1 on some drivers).
        return len(s.execute(stmt, list(rows)).all())

    def try_controller_lock(self) -> Any | None:
        """Hold the single-controller lock; returns a connection to keep open, or None if taken.

        PostgreSQL: a session advisory lock (released if this process dies). SQLite: one process
        owns the file, so the lock is trivially ours.
        """
        if self.dialect != "postgresql":
            return object()
        conn = self.engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": CONTROLLER_LOCK_ID}).scalar()
        conn.commit()
        if got:
            return conn
        conn.close()
        return None

    @contextmanager
    def publish_lock(self) -> Iterator[None]:
        """Held while a replica writes the shared TUF repository (a release, a timestamp re-sign).

        PostgreSQL: a session advisory lock on its own connection (waits for the holder; freed
        by PostgreSQL if the holder dies), so replicas on a shared directory never publish at
        once whatever the filesystem's locking. SQLite: one server, nothing to take.
        """
        if self.dialect != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PUBLISH_LOCK_ID})
            conn.commit()
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PUBLISH_LOCK_ID})
                    conn.commit()
                except Exception:
                    conn.invalidate()  # a broken connection: PostgreSQL frees the lock with it

    def release_controller_lock(self, lock: Any) -> None:
        """Give the controller lock back (the pooled connection would otherwise keep holding it)."""
        if self.dialect != "postgresql" or lock is None:
            return
        try:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": CONTROLLER_LOCK_ID})
            lock.commit()
        except Exception:
            lock.invalidate()  # a broken connection: drop it (PostgreSQL frees the lock with it)
        finally:
            lock.close()

    def controller_lock_alive(self, lock: Any) -> bool:
        """Is the lock's connection still up? (If PostgreSQL restarted, the lock is gone.)"""
        if self.dialect != "postgresql":
            return True
        try:
            lock.execute(text("SELECT 1"))
            lock.commit()
            return True
        except Exception:
            lock.invalidate()
            lock.close()
            return False

    def dispose(self) -> None:
        self.engine.dispose()
