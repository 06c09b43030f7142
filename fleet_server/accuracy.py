"""Field accuracy: how often each model version was right about packages whose truth came back.

Truth is joined to decisions on the device (edge_agent/decision_log.py): each ``truth.joined``
event names the model that decided, its label, the true label and the dimension error. This
module counts those events. :func:`field_accuracy` is pure (rows in, summaries out) so rollout and
release gates can call it on any selection; :func:`query` is the thin database shell.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from fleet_server.db import Database, EventRow

JOINED = "truth.joined"


@dataclass(frozen=True, slots=True)
class FieldAccuracy:
    """One model version (and device, when grouped by device): joined truth, correct, MAE."""

    model: str  # name@version
    device_id: str | None
    n: int
    correct: int
    dimension_n: int
    dimension_mae_mm: float | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device_id": self.device_id,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "dimension_n": self.dimension_n,
            "dimension_mae_mm": self.dimension_mae_mm,
        }


def field_accuracy(
    events: Iterable[tuple[str, Mapping[str, Any]]], *, by_device: bool = False
) -> list[FieldAccuracy]:
    """Summaries from ``(device_id, truth.joined event data)`` pairs, per model (and device). Pure."""
    acc: dict[tuple[str, str | None], list[float]] = {}
    for device_id, data in events:
        model = data.get("model")
        if not isinstance(model, str) or not isinstance(data.get("correct"), bool):
            continue
        key = (model, device_id if by_device else None)
        a = acc.setdefault(key, [0, 0, 0, 0.0])
        a[0] += 1
        a[1] += 1 if data["correct"] else 0
        err = data.get("dimension_abs_error_mm")
        if isinstance(err, int | float):
            a[2] += 1
            a[3] += float(err)
    return [
        FieldAccuracy(m, d, int(a[0]), int(a[1]), int(a[2]), a[3] / a[2] if a[2] else None)
        for (m, d), a in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    ]


def query(
    db: Database,
    *,
    device_id: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    by_device: bool = False,
) -> list[FieldAccuracy]:
    """Field accuracy from the stored ``truth.joined`` events (time = when the device joined it)."""
    # A time without a zone (``?since=2026-11-30T12:00``) is UTC, like every time the fleet stores.
    since = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until is not None and until.tzinfo is None else until
    stmt = select(EventRow.device_id, EventRow.payload).where(EventRow.kind == JOINED)
    if device_id is not None:
        stmt = stmt.where(EventRow.device_id == device_id)
    if since is not None:
        stmt = stmt.where(EventRow.at >= since)
    if until is not None:
        stmt = stmt.where(EventRow.at < until)
    with db.session() as s:
        rows = [(d, (p or {}).get("data") or {}) for d, p in s.execute(stmt).all()]
    out = field_accuracy(rows, by_device=by_device)
    return [a for a in out if model is None or a.model == model]
