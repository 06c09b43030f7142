"""API additions the dashboard needs: who am I (the token's role) and one-request device overview.

``GET /api/v1/whoami`` → ``{"role": "admin" | "viewer"}``; the page shows or hides the admin
controls from it (the server refuses viewer writes regardless).

``GET /api/v1/dashboard/devices`` → the device list, each with its latest telemetry window,
its open alerts and a ``health`` verdict, so the page needs one request per poll rather than one
per device. ``device_health`` is the pure rule behind the verdict.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import and_, func, select

from fleet_server.api import Viewer, _svc
from fleet_server.db import AlertRow, Database, TelemetryRow
from fleet_server.registry import telemetry_dict

# A window where more than this share of decisions were unconfident marks the device degraded.
LOW_CONFIDENCE_DEGRADED = 0.25

router = APIRouter(prefix="/api/v1", tags=["dashboard"])


def device_health(device: dict[str, Any], latest: dict[str, Any] | None, open_alerts: int) -> dict[str, Any]:
    """A device's health for people: ``status`` (worst first: offline, failing, degraded,
    probation, unknown, ok) and the ``reasons`` behind it.

    ``latest`` is the device's newest telemetry window (``registry.telemetry_dict``) or None.
    """
    reasons: list[str] = []
    status = "ok"
    if not device.get("online"):
        return {"status": "offline", "reasons": ["not connected or not heard from recently"]}
    if latest is None:
        status = "unknown"
        reasons.append("no telemetry yet")
    else:
        frames = int(latest.get("frames") or 0)
        errors = int(latest.get("errors") or 0)
        if errors > 0:
            status = "failing"
            reasons.append(f"{errors} inference errors in the last window")
        if frames == 0:
            status = "failing"
            reasons.append("no frames in the last window")
        elif (latest.get("low_confidence") or 0) / frames > LOW_CONFIDENCE_DEGRADED:
            if status == "ok":
                status = "degraded"
            reasons.append(f"low-confidence rate {latest['low_confidence'] / frames:.0%}")
    if open_alerts:
        if status in ("ok", "unknown"):
            status = "degraded"
        reasons.append(f"{open_alerts} open alert{'s' if open_alerts != 1 else ''}")
    if device.get("probation") and status in ("ok", "unknown"):
        status = "probation"
        reasons.append("new model on probation")
    return {"status": status, "reasons": reasons}


def _latest_telemetry(db: Database) -> dict[str, dict[str, Any]]:
    newest = (
        select(TelemetryRow.device_id, func.max(TelemetryRow.seq).label("seq"))
        .group_by(TelemetryRow.device_id)
        .subquery()
    )
    q = select(TelemetryRow).join(
        newest, and_(TelemetryRow.device_id == newest.c.device_id, TelemetryRow.seq == newest.c.seq)
    )
    with db.session() as s:
        return {row.device_id: telemetry_dict(row) for row in s.scalars(q).all()}


def _open_alerts_by_device(db: Database) -> dict[str, int]:
    q = (
        select(AlertRow.device_id, func.count())
        .where(AlertRow.acknowledged.is_(False), AlertRow.device_id.is_not(None))
        .group_by(AlertRow.device_id)
    )
    with db.session() as s:
        return {str(device_id): int(n) for device_id, n in s.execute(q).all()}


@router.get("/whoami")
def whoami(role: Viewer) -> dict[str, str]:
    """The presented token's role."""
    return {"role": role}


@router.get("/dashboard/devices")
def dashboard_devices(request: Request, _: Viewer) -> list[dict[str, Any]]:
    """Every device with ``latest`` telemetry, ``open_alerts`` and ``health``."""
    svc = _svc(request)
    devices = svc.registry.list_devices()
    latest = _latest_telemetry(svc.db)
    alerts = _open_alerts_by_device(svc.db)
    for d in devices:
        d["latest"] = latest.get(d["device_id"])
        d["open_alerts"] = alerts.get(d["device_id"], 0)
        d["health"] = device_health(d, d["latest"], d["open_alerts"])
    return devices


__all__ = ["LOW_CONFIDENCE_DEGRADED", "device_health", "router"]
