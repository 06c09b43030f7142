"""Alerts: drift events from devices and rollout halts; list, acknowledge, optional webhook POST.

An alert is stored once per source (``dedup_key``: the device event's (device, seq) or the
rollout id), so redelivered events or a restarted controller do not duplicate it. The webhook
is best effort with retries on a background thread: alerting never blocks ingest or rollouts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select

from fleet_server.db import AlertRow, Database, utcnow
from lineside_common.retry import Backoff, retry

log = logging.getLogger(__name__)


def alert_dict(row: AlertRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": row.created_at,
        "kind": row.kind,
        "severity": row.severity,
        "device_id": row.device_id,
        "rollout_id": row.rollout_id,
        "message": row.message,
        "data": row.data,
        "acknowledged": row.acknowledged,
        "acknowledged_at": row.acknowledged_at,
    }


class Webhook:
    """POSTs alerts as JSON to a URL on its own thread; retries with backoff, drops when full.

    An alert gets ``retries + 1`` attempts, ``backoff_s * 2**n`` apart (no wait after the last);
    ``sleep`` is the wait, injectable for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        retries: int = 3,
        timeout_s: float = 5.0,
        backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.url = url
        self.transport = transport
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="fleet-webhook", daemon=True)
        self._thread.start()

    def post(self, alert: dict[str, Any]) -> None:
        try:
            self._q.put_nowait(alert)
        except queue.Full:
            log.warning("webhook queue full; alert %s not posted", alert.get("id"))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=self.timeout_s)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client:
            while True:
                item = self._q.get()
                if item is None:
                    return
                body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in item.items()}
                self._deliver(client, body)

    def _deliver(self, client: httpx.Client, body: dict[str, Any]) -> None:
        try:
            retry(
                lambda: client.post(self.url, json=body).raise_for_status(),
                attempts=self.retries + 1,
                # Uncapped doubling, as ever: the cap is the largest delay the attempts reach.
                backoff=Backoff(self.backoff_s, self.backoff_s * 2**self.retries, jitter=False),
                retry_on=(httpx.HTTPError,),
                sleep=self._sleep,
                on_retry=lambda attempt, exc, delay_s: log.warning(
                    "webhook POST failed (attempt %d): %s", attempt, exc
                ),
            )
        except httpx.HTTPError as exc:
            log.warning("webhook POST failed (attempt %d, the last): %s", self.retries + 1, exc)


class Alerts:
    """The alert store (and its webhook)."""

    def __init__(self, db: Database, webhook: Webhook | None = None) -> None:
        self.db = db
        self.webhook = webhook

    def raise_alert(
        self,
        kind: str,
        message: str,
        *,
        severity: str = "warning",
        device_id: str | None = None,
        rollout_id: str | None = None,
        data: dict[str, Any] | None = None,
        dedup_key: str | None = None,
    ) -> dict[str, Any] | None:
        """Store an alert (once per ``dedup_key``); returns it, or None if it already existed."""
        with self.db.session() as s:
            if dedup_key is not None and s.scalar(select(AlertRow.id).where(AlertRow.dedup_key == dedup_key)):
                return None
            row = AlertRow(
                created_at=utcnow(),
                kind=kind,
                severity=severity,
                device_id=device_id,
                rollout_id=rollout_id,
                message=message,
                data=data or {},
                acknowledged=False,
                dedup_key=dedup_key,
            )
            s.add(row)
            s.flush()
            out = alert_dict(row)
        log.warning("alert %s: %s", kind, message)
        if self.webhook is not None:
            self.webhook.post(out)
        return out

    def list_alerts(self, *, include_acknowledged: bool = True, limit: int = 200) -> list[dict[str, Any]]:
        with self.db.session() as s:
            q = select(AlertRow).order_by(AlertRow.id.desc()).limit(limit)
            if not include_acknowledged:
                q = q.where(AlertRow.acknowledged.is_(False))
            return [alert_dict(r) for r in s.scalars(q).all()]

    def acknowledge(self, alert_id: int) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.get(AlertRow, alert_id)
            if row is None:
                return None
            if not row.acknowledged:
                row.acknowledged, row.acknowledged_at = True, utcnow()
            return alert_dict(row)

    def count_open(self) -> int:
        with self.db.session() as s:
            return len(s.scalars(select(AlertRow.id).where(AlertRow.acknowledged.is_(False))).all())
