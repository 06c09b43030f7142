"""The device registry: what the fleet knows about each device, from its retained ``state``
messages (and Last Will), its telemetry (last seen, recent windows), and operator-assigned
group and tags.

``online`` is the device's own claim (its state, or the broker's Last Will saying it went away),
and additionally false when nothing has been heard from it for ``offline_after_s``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from edge_agent.messages import DeviceState
from fleet_server.db import Database, DeviceRow, EventRow, TelemetryRow, utcnow


def _get_or_create(s: Session, device_id: str, now: datetime) -> DeviceRow:
    row = s.get(DeviceRow, device_id)
    if row is None:
        row = DeviceRow(device_id=device_id, online=False, first_seen=now, tags=[], state={})
        s.add(row)
    return row


def apply_state(s: Session, state: DeviceState, now: datetime) -> None:
    """A retained state message (or the Last Will): update what the device says about itself.

    Older online state than what we have (by ``since``) is ignored, so a redelivered retained
    message never overwrites a newer one.
    """
    row = _get_or_create(s, state.device_id, now)
    # The Last Will (online=False) was composed when the device connected, so its ``since`` is
    # older than later state; it still wins — it is the broker telling us the device is gone.
    if row.state_since is not None and state.since < row.state_since and state.online:
        return
    row.state_since = state.since
    row.online = state.online
    row.state = state.model_dump(mode="json")
    if state.online:
        row.last_seen = now
    # The Last Will carries only what the broker was given at connect time: keep the facts
    # we know when it omits them.
    if state.agent_version:
        row.agent_version = state.agent_version
    if state.device_class:
        row.device_class = state.device_class
    if state.execution_provider:
        row.execution_provider = state.execution_provider
    if state.active_model is not None or state.online:
        row.active_name = state.active_model.name if state.active_model else None
        row.active_version = state.active_model.version if state.active_model else None
        row.previous_name = state.previous_model.name if state.previous_model else None
        row.previous_version = state.previous_model.version if state.previous_model else None
        row.probation = state.probation


def touch(s: Session, device_id: str, now: datetime) -> None:
    """Something arrived from the device: it is alive."""
    row = _get_or_create(s, device_id, now)
    if row.last_seen is None or row.last_seen < now:
        row.last_seen = now


def touch_many(s: Session, device_ids: list[str], at: datetime) -> None:
    """Known devices heard from at ``at``: one UPDATE for the lot (ingest's hot path)."""
    if device_ids:
        s.execute(
            update(DeviceRow)
            .where(DeviceRow.device_id.in_(device_ids))
            .where(or_(DeviceRow.last_seen.is_(None), DeviceRow.last_seen < at))
            .values(last_seen=at)
        )


def device_dict(row: DeviceRow, now: datetime, offline_after_s: float) -> dict[str, Any]:
    recent = row.last_seen is not None and now - row.last_seen <= timedelta(seconds=offline_after_s)
    return {
        "device_id": row.device_id,
        "online": bool(row.online and recent),
        "last_seen": row.last_seen,
        "first_seen": row.first_seen,
        "agent_version": row.agent_version,
        "device_class": row.device_class,
        "active_model": f"{row.active_name}@{row.active_version}" if row.active_name else None,
        "previous_model": f"{row.previous_name}@{row.previous_version}" if row.previous_name else None,
        "probation": row.probation,
        "execution_provider": row.execution_provider,
        "group": row.group,
        "tags": list(row.tags or []),
    }


def telemetry_dict(row: TelemetryRow) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "received_at": row.received_at,
        "window_start": row.window_start,
        "window_s": row.window_s,
        "model": f"{row.model_name}@{row.model_version}" if row.model_name else None,
        "frames": row.frames,
        "dropped": row.payload.get("dropped", 0),
        "errors": row.errors,
        "confidence_p50": row.confidence_p50,
        "confidence_mean": row.confidence_mean,
        "low_confidence": row.low_confidence,
        "latency_ms_p99": row.latency_ms_p99,
        "fps": row.payload.get("fps", 0.0),
    }


def event_dict(row: EventRow) -> dict[str, Any]:
    p = row.payload
    return {
        "seq": row.seq,
        "kind": row.kind,
        "at": row.at,
        "received_at": row.received_at,
        "level": p.get("level", "info"),
        "message": p.get("message", ""),
        "model": p.get("model"),
        "data": p.get("data", {}),
        "cmd_id": row.cmd_id,
        "rollout_id": row.rollout_id,
    }


class Registry:
    """Queries and operator edits over the devices table."""

    def __init__(self, db: Database, *, offline_after_s: float = 120.0) -> None:
        self.db = db
        self.offline_after_s = offline_after_s

    def list_devices(self, *, group: str | None = None, tag: str | None = None) -> list[dict[str, Any]]:
        now = utcnow()
        with self.db.session() as s:
            q = select(DeviceRow).order_by(DeviceRow.device_id)
            if group is not None:
                q = q.where(DeviceRow.group == group)
            rows = s.scalars(q).all()
            out = [device_dict(r, now, self.offline_after_s) for r in rows]
        if tag is not None:
            out = [d for d in out if tag in d["tags"]]
        return out

    def get(self, device_id: str, *, recent: int = 20) -> dict[str, Any] | None:
        now = utcnow()
        with self.db.session() as s:
            row = s.get(DeviceRow, device_id)
            if row is None:
                return None
            out = device_dict(row, now, self.offline_after_s)
            out["state"] = row.state
            tel = s.scalars(
                select(TelemetryRow)
                .where(TelemetryRow.device_id == device_id)
                .order_by(TelemetryRow.seq.desc())
                .limit(recent)
            ).all()
            out["recent_telemetry"] = [telemetry_dict(t) for t in tel]
        return out

    def events(
        self, device_id: str, *, limit: int = 100, kind: str | None = None
    ) -> list[dict[str, Any]] | None:
        """A device's events, newest first (None for an unknown device).

        ``kind`` is one kind or several, comma-separated (the chart asks for the few it marks, so a
        busy channel such as ``truth.joined`` cannot push them out of the newest ``limit``).
        """
        with self.db.session() as s:
            if s.get(DeviceRow, device_id) is None:
                return None
            q = select(EventRow).where(EventRow.device_id == device_id)
            kinds = [k.strip() for k in (kind or "").split(",") if k.strip()]
            if kinds:
                q = q.where(EventRow.kind.in_(kinds))
            rows = s.scalars(q.order_by(EventRow.seq.desc()).limit(limit)).all()
            return [event_dict(r) for r in rows]

    def assign(
        self,
        device_id: str,
        *,
        group: str | None = None,
        tags: list[str] | None = None,
        clear_group: bool = False,
    ) -> dict[str, Any] | None:
        """Set a known device's group and/or tags; None for a device the fleet does not know.

        Editing never registers a device (a typo must not create a phantom robot that a
        group rollout then waits for): registering is :meth:`register`.
        """
        now = utcnow()
        with self.db.session() as s:
            row = s.get(DeviceRow, device_id)
            if row is None:
                return None
            if clear_group:
                row.group = None
            elif group is not None:
                row.group = group
            if tags is not None:
                row.tags = sorted(set(tags))
            s.flush()
            return device_dict(row, now, self.offline_after_s)

    def register(
        self, device_id: str, *, group: str | None = None, tags: list[str] | None = None
    ) -> dict[str, Any] | None:
        """Register a device before its first connection (so it can be put in a group).

        Returns the new device, or None when it is already registered (nothing changed).
        """
        now = utcnow()
        with self.db.session() as s:
            if s.get(DeviceRow, device_id) is not None:
                return None
            row = DeviceRow(
                device_id=device_id,
                online=False,
                first_seen=None,
                group=group,
                tags=sorted(set(tags or [])),
                state={},
            )
            s.add(row)
            s.flush()
            return device_dict(row, now, self.offline_after_s)

    def select(self, *, group: str | None = None, device_ids: list[str] | None = None) -> list[str]:
        """Devices for a rollout: the named ones as given, or a group's, online ones first."""
        if device_ids is not None:
            return list(device_ids)
        devices = self.list_devices(group=group)
        devices.sort(key=lambda d: (not d["online"], d["device_id"]))
        return [d["device_id"] for d in devices]

    def known(self, device_ids: list[str]) -> set[str]:
        with self.db.session() as s:
            return set(
                s.scalars(select(DeviceRow.device_id).where(DeviceRow.device_id.in_(device_ids))).all()
            )

    def counts(self) -> dict[str, int]:
        """Devices known and online (as ``device_dict`` decides it), counted by the database.

        Two COUNTs rather than loading every row: ``/metrics`` calls this on each scrape, and
        building 10,000 device rows there took the ingest thread's CPU (measured: BENCHMARKS.md).
        """
        cutoff = utcnow() - timedelta(seconds=self.offline_after_s)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(DeviceRow)) or 0
            online = (
                s.scalar(
                    select(func.count())
                    .select_from(DeviceRow)
                    .where(DeviceRow.online.is_(True))
                    .where(DeviceRow.last_seen >= cutoff)
                )
                or 0
            )
        return {"total": int(total), "online": int(online)}
