"""The rollout controller: the I/O shell around ``rollouts.Rollout``.

A loop (``run``) that, every ``tick_s``, loads each active rollout, applies the device events
that answer its commands (correlated by ``cmd_id``, which we issued, then by ``rollout_id``),
measures the quality gate's telemetry when the state machine asks for it, ticks it with the
clock, publishes the resulting ``deploy``/``rollback`` commands, raises alerts, and saves it.

Crash safety: commands are published BEFORE the new state is saved. A crash in between means
the next controller (after a restart) recomputes the same step and publishes the same commands
again with the same ``cmd_id`` — agents are idempotent on it — so nothing is skipped; events
are re-applied from the database on every start, and transitions are idempotent.

One controller at a time: on PostgreSQL, an advisory lock elects it among replicas (the others
serve the API and ingest); on SQLite there is only one process.

Size: one concern, the thin shell that carries out ``rollouts.py``'s decisions (load, step,
publish, save, alert) and the per-rollout cache that makes a tick cost what changed; the
decisions themselves are in ``rollouts.py``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import case, null, or_, select, update

from edge_agent.agreement import merge_blocks
from edge_agent.messages import DeployCommand, RollbackCommand, StopShadowCommand, Topics, dump
from fleet_server.accuracy import JOINED, field_accuracy
from fleet_server.alerts import Alerts
from fleet_server.db import Database, DeviceRow, EventRow, RawJSON, RolloutRow, TelemetryRow
from fleet_server.field_gate import TruthCounts
from fleet_server.quality_verdicts import WindowSample
from fleet_server.rollouts import (
    IN_FLIGHT,
    PROGRESS_EVENTS,
    Action,
    DeviceStatus,
    Policy,
    QualityReport,
    RaiseAlert,
    Rollout,
    RolloutState,
    SendDeploy,
    SendRollback,
    SendShadowDeploy,
    SendStopShadow,
    StageSize,
    summarize,
)
from fleet_server.shadow_phase import ShadowGates
from lineside_common.errors import ConflictError, NotFoundError

log = logging.getLogger(__name__)

# Deploys awaiting a first answer at once (Rollout.tick's pacing). Sending a whole 10,000-device
# stage at once queued ~60,000 answers behind each other in ingest, and devices whose answers
# waited longer than 5 deploys 30 s apart were failed (BENCHMARKS.md section 13).
MAX_UNANSWERED = 1000

# Up to this many devices in flight, the state fallback asks for them by id; beyond, by version.
STATE_QUERY_IN_MAX = 500


class Publisher(Protocol):
    """Where commands go (the MQTT link; a list in tests)."""

    def publish(self, topic: str, payload: bytes) -> None: ...


@dataclass(frozen=True)
class _Loaded:
    """A rollout as this process last read or wrote it: the row's ``updated_at`` then, the state
    machine, and its document as stored (to tell whether a step changed anything)."""

    updated_at: datetime
    rollout: Rollout
    doc: str


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def rollout_view(r: Rollout) -> dict[str, Any]:
    """The API's view of a rollout: the document plus per-stage counts."""
    out = r.model_dump(mode="json")
    out.update(r.summary())
    out["ref"] = f"{r.name}@{r.version}"
    return out


class RolloutController:
    """Creates and advances rollouts; all mutations go through here (one lock per process)."""

    def __init__(
        self,
        db: Database,
        publisher: Publisher | None,
        alerts: Alerts,
        topics: Topics,
        *,
        clock: Callable[[], float] = time.time,
        full_rescan_every_s: float = 10.0,
        max_unanswered: int | None = MAX_UNANSWERED,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.alerts = alerts
        self.topics = topics
        self.clock = clock
        self._lock = threading.RLock()
        self._cursor: dict[str, int] = {}  # rollout id → last event row id applied (in this process)
        self._cache: dict[str, _Loaded] = {}  # rollout id → its state as this process last read/wrote it
        self._last_rescan = 0.0
        self.full_rescan_every_s = full_rescan_every_s
        self.max_unanswered = max_unanswered
        self.is_leader = False

    # -- persistence -----------------------------------------------------------------------------

    def _load(self, s: Any, rollout_id: str) -> _Loaded:
        """Lock the rollout's row and return its state machine, parsed from the row only when it
        changed since this process last read or wrote it (``updated_at`` moves on every write)."""
        updated_at = s.scalar(
            select(RolloutRow.updated_at).where(RolloutRow.id == rollout_id).with_for_update()
        )
        if updated_at is None:
            raise NotFoundError(rollout_id, reason="unknown_rollout")
        cached = self._cache.get(rollout_id)
        if cached is not None and cached.updated_at == updated_at:
            return cached
        r = Rollout.model_validate(s.scalar(select(RolloutRow.doc).where(RolloutRow.id == rollout_id)))
        loaded = _Loaded(updated_at, r, r.model_dump_json())
        self._cache[rollout_id] = loaded
        return loaded

    def _store(self, s: Any, loaded: _Loaded, now: float) -> None:
        """Write the document back if anything changed (most ticks change nothing)."""
        r = loaded.rollout
        doc = r.model_dump_json()
        if doc == loaded.doc:
            return
        # Strictly later than what we read, even with a clock that stands still: another
        # replica's cached copy is judged stale by this column alone.
        updated_at = max(_dt(now), loaded.updated_at + timedelta(microseconds=1))
        s.execute(
            update(RolloutRow)
            .where(RolloutRow.id == r.id)
            .values(doc=RawJSON(doc), state=r.state.value, updated_at=updated_at)
        )
        self._cache[r.id] = _Loaded(updated_at, r, doc)

    @contextmanager
    def _locked(self, rollout_id: str) -> Iterator[tuple[Any, _Loaded]]:
        """The rollout's row locked in a transaction; on any failure this process forgets what it
        cached (and its event cursor) for the rollout, so the next step starts from the database."""
        with self._lock:
            try:
                with self.db.session() as s:
                    yield s, self._load(s, rollout_id)
            except BaseException:
                self._cache.pop(rollout_id, None)
                self._cursor.pop(rollout_id, None)
                raise

    # -- API operations -------------------------------------------------------------------------

    def create(
        self,
        name: str,
        version: str,
        device_ids: list[str],
        stages: list[StageSize],
        policy: Policy,
        *,
        shadow: StageSize | None = None,
        shadow_soak_s: float = 0.0,
        shadow_gates: ShadowGates | None = None,
    ) -> dict[str, Any]:
        """Create and start a rollout; with ``shadow`` (a share of ``device_ids``) it opens with a
        shadow phase on the first devices of the list (see :mod:`fleet_server.shadow_phase`)."""
        now = self.clock()
        rid = "r" + uuid.uuid4().hex[:10]
        shadow_ids = device_ids[: shadow.devices(len(device_ids))] if shadow is not None else []
        r = Rollout.create(
            rid,
            name,
            version,
            device_ids,
            stages,
            policy,
            now,
            shadow_devices=shadow_ids,
            shadow_size=str(shadow) if shadow is not None else "",
            shadow_soak_s=shadow_soak_s,
            shadow_gates=shadow_gates,
        )
        with self._lock:
            with self.db.session() as s:
                busy = s.scalars(select(RolloutRow).where(RolloutRow.state.in_(["running", "paused"]))).all()
                for other in busy:
                    overlap = set(device_ids) & set(other.doc.get("devices", {}))
                    if overlap:
                        raise ConflictError(
                            f"rollout {other.id} ({other.name}@{other.version}) is still {other.state} on "
                            f"{', '.join(sorted(overlap)[:5])}; pause/abort it first",
                            reason="devices_busy",
                            field="devices",
                        )
                s.add(
                    RolloutRow(
                        id=rid,
                        name=name,
                        version=version,
                        state=r.state.value,
                        created_at=_dt(now),
                        updated_at=_dt(now),
                        doc=r.model_dump(mode="json"),
                    )
                )
            self._step(rid)  # send the first stage's deploys now, not a tick later
        return self.get(rid)

    def get(self, rollout_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFoundError(rollout_id, reason="unknown_rollout")
            return rollout_view(Rollout.model_validate(row.doc))

    def list_rollouts(self, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.session() as s:
            q = select(RolloutRow).order_by(RolloutRow.created_at.desc()).limit(limit)
            if state:
                q = q.where(RolloutRow.state == state)
            out = []
            for row in s.scalars(q).all():
                r = Rollout.model_validate(row.doc)
                out.append(
                    {
                        "id": r.id,
                        "ref": f"{r.name}@{r.version}",
                        "state": r.state.value,
                        "stage": r.stage,
                        "stages": len(r.stages),
                        "devices": len(r.devices),
                        "created_at": _dt(r.created_at),
                        "reason": r.reason,
                    }
                )
            return out

    def counts_by_state(self) -> dict[str, int]:
        with self.db.session() as s:
            states = s.scalars(select(RolloutRow.state)).all()
        out = {st.value: 0 for st in RolloutState}
        for st in states:
            out[st] = out.get(st, 0) + 1
        return out

    def _mutate(self, rollout_id: str, fn: Callable[[Rollout, float], list[Action] | bool]) -> dict[str, Any]:
        with self._locked(rollout_id) as (s, loaded):
            now = self.clock()
            result = fn(loaded.rollout, now)
            actions = result if isinstance(result, list) else []
            self._execute(loaded.rollout, actions)
            self._store(s, loaded, now)
        return self.get(rollout_id)

    def pause(self, rollout_id: str) -> dict[str, Any]:
        return self._mutate(rollout_id, lambda r, now: r.pause(now))

    def resume(self, rollout_id: str, *, by: str = "", why: str = "") -> dict[str, Any]:
        """Resume; past an inconclusive verdict this is an override (ConfigError without ``why``)."""
        return self._mutate(rollout_id, lambda r, now: r.resume(now, by=by, why=why))

    def abort(self, rollout_id: str, *, rollback: bool = False) -> dict[str, Any]:
        return self._mutate(rollout_id, lambda r, now: r.abort(now, rollback=rollback))

    def rollback_devices(self, device_ids: list[str], reason: str) -> list[dict[str, str]]:
        """An operator's ``fleet rollback``: send ``rollback`` to each device now."""
        out = []
        for d in device_ids:
            cmd_id = "m" + uuid.uuid4().hex[:12]
            self._publish(d, dump(RollbackCommand(cmd_id=cmd_id, reason=reason, issued_at=_dt(self.clock()))))
            out.append({"device_id": d, "cmd_id": cmd_id})
        return out

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event, tick_s: float = 0.5, *, elect_every_s: float = 2.0) -> None:
        """Advance every active rollout until ``stop``; only while holding the controller lock.

        A replica without the lock tries again every ``elect_every_s``: when the holder dies
        (kill -9, power), PostgreSQL ends its session and frees the lock as soon as the TCP
        connection drops, so a standby takes over within about that long. The holder checks its
        lock connection before every tick, so one that lost it (its connection was cut while
        the process lives on) stops acting at once instead of running beside the new holder.
        """
        lock_conn = None
        while not stop.is_set():
            if lock_conn is not None and not self.db.controller_lock_alive(lock_conn):
                log.warning("lost the controller lock's connection; re-electing")
                lock_conn, self.is_leader = None, False
            if lock_conn is None:
                try:
                    lock_conn = self.db.try_controller_lock()
                except Exception:
                    log.exception("cannot reach the database to elect the rollout controller; retrying")
                    lock_conn = None
                self.is_leader = lock_conn is not None
                if lock_conn is None:
                    stop.wait(elect_every_s)
                    continue
                log.info("this server runs the rollout controller")
                self._cursor.clear()  # re-apply every event after (re)gaining leadership
                self._cache.clear()
            try:
                self.tick_all()
            except Exception:
                log.exception("rollout controller tick failed; retrying")
            stop.wait(tick_s)
        if lock_conn is not None:
            self.db.release_controller_lock(lock_conn)
        self.is_leader = False

    def tick_all(self) -> None:
        """One pass over every active rollout (tests call this directly)."""
        now = self.clock()
        if now - self._last_rescan >= self.full_rescan_every_s:
            # Events can commit out of id order on PostgreSQL with several writers: re-applying
            # everything now and then (idempotent) catches any that an incremental pass skipped.
            self._cursor.clear()
            self._last_rescan = now
        with self.db.session() as s:
            ids = s.scalars(select(RolloutRow.id).where(RolloutRow.state.in_(["running", "paused"]))).all()
        for rid in ids:
            self._step(rid)

    def _step(self, rollout_id: str) -> None:
        with self._locked(rollout_id) as (s, loaded):
            r = loaded.rollout
            if not r.active:
                self._cache.pop(rollout_id, None)  # finished: nothing more to step
                return
            now = self.clock()
            self._apply_events(s, r, now)
            quality = self._measure(s, r) if r.awaiting_gate(now) else None
            shadow = self._measure_shadow(s, r) if r.awaiting_shadow_verdict(now) else None
            actions = r.tick(now, quality, shadow, max_unanswered=self.max_unanswered)
            self._execute(r, actions)
            self._store(s, loaded, now)

    def _apply_events(self, s: Any, r: Rollout, now: float) -> None:
        cursor = self._cursor.get(r.id, 0)
        # Columns, not rows, and the payload only of the kinds whose reason is read: a full
        # rescan of a 10,000-device rollout re-reads ~60,000 events.
        payload = case((EventRow.kind.in_(list(PROGRESS_EVENTS)), null()), else_=EventRow.payload)
        q = (
            select(
                EventRow.id, EventRow.device_id, EventRow.kind, EventRow.received_at, EventRow.cmd_id, payload
            )
            .where(EventRow.id > cursor)
            .where(or_(EventRow.cmd_id.like(f"{r.id}-%"), EventRow.rollout_id == r.id))
            .order_by(EventRow.id)
        )
        for ev_id, device_id, kind, received_at, cmd_id, body in s.execute(q).all():
            cursor = max(cursor, ev_id)
            body = body or {}
            data = body.get("data") or {}
            reason = str(data.get("reason") or body.get("message") or "")
            at = received_at.timestamp()
            if r.on_event(device_id, kind, min(now, at), cmd_id=cmd_id, reason=reason):
                log.debug("rollout %s: %s %s", r.id, device_id, kind)
        self._cursor[r.id] = cursor
        deferred = [d for d, p in r.devices.items() if p.status == DeviceStatus.DEFERRED]
        if deferred:
            for device_id, since in s.execute(
                select(DeviceRow.device_id, DeviceRow.state_since).where(DeviceRow.device_id.in_(deferred))
            ).all():
                if since is not None and r.on_restart(device_id, since.timestamp(), now):
                    log.info("rollout %s: %s restarted while deferred; re-sending", r.id, device_id)
        waiting = {d for d, p in r.devices.items() if p.status in IN_FLIGHT}
        if waiting:
            q = select(
                DeviceRow.device_id, DeviceRow.active_version, DeviceRow.probation, DeviceRow.state_since
            ).where(DeviceRow.active_version == r.version)
            if len(waiting) <= STATE_QUERY_IN_MAX:
                q = q.where(DeviceRow.device_id.in_(waiting))
            else:
                # Thousands in flight: no list of ids to bind (and convert) on every tick; the
                # devices that changed their state after the rollout began, filtered here.
                first_sent = [r.devices[d].first_sent_at for d in waiting]
                since = min((t for t in first_sent if t is not None), default=r.started_at)
                q = q.where(DeviceRow.state_since >= _dt(since))
            for device_id, version, probation, since in s.execute(q).all():
                if device_id not in waiting:
                    continue
                if since is not None and r.on_state(
                    device_id, version, bool(probation), since.timestamp(), now
                ):
                    log.info(
                        "rollout %s: %s confirmed by its state (no probation.passed event seen)",
                        r.id,
                        device_id,
                    )

    def _measure(self, s: Any, r: Rollout) -> QualityReport:
        """The gate's telemetry: the canary on the new version, and a baseline — concurrent (rollout
        devices not yet sent the release, over the same period) when it holds enough frames, else
        the same devices before the rollout."""
        devices = r.gate_devices()
        ids = [p.device_id for p in devices]
        since = min(p.passed_at if p.passed_at is not None else r.started_at for p in devices)
        cols = (
            TelemetryRow.frames,
            TelemetryRow.confidence_p50,
            TelemetryRow.low_confidence,
            TelemetryRow.errors,
        )
        cur_rows = s.execute(
            select(*cols)
            .where(TelemetryRow.device_id.in_(ids))
            .where(TelemetryRow.model_version == r.version)
            .where(TelemetryRow.received_at >= _dt(since))
        ).all()
        waiting = [
            d for d, p in r.devices.items() if p.status in (DeviceStatus.WAITING, DeviceStatus.PENDING)
        ]
        conc_rows = (
            s.execute(
                select(*cols)
                .where(TelemetryRow.device_id.in_(waiting))
                .where(TelemetryRow.model_version != r.version)
                .where(TelemetryRow.received_at >= _dt(since))
            ).all()
            if waiting
            else []
        )
        kind = "concurrent"
        base_rows = conc_rows
        if sum(int(row[0]) for row in conc_rows) < max(1, r.policy.min_gate_frames):
            kind = "before"
            base_rows = s.execute(
                select(*cols)
                .where(TelemetryRow.device_id.in_(ids))
                .where(TelemetryRow.received_at < _dt(r.started_at))
                .where(
                    TelemetryRow.received_at
                    >= _dt(r.started_at) - timedelta(seconds=r.policy.baseline_window_s)
                )
            ).all()

        def samples(rows: Any) -> tuple[WindowSample, ...]:
            return tuple(
                WindowSample(
                    frames=int(a), confidence_p50=float(b), low_confidence=int(c), errors=int(e or 0)
                )
                for a, b, c, e in rows
            )

        field_canary, field_baseline, field_kind = self._measure_truth(s, r, ids, waiting, since)
        return QualityReport(
            baseline=summarize((int(a), float(b), int(c)) for a, b, c, _ in base_rows),
            current=summarize((int(a), float(b), int(c)) for a, b, c, _ in cur_rows),
            baseline_windows=samples(base_rows),
            current_windows=samples(cur_rows),
            baseline_kind=kind,
            field_canary=field_canary,
            field_baseline=field_baseline,
            field_baseline_kind=field_kind,
        )

    def _measure_truth(
        self, s: Any, r: Rollout, ids: list[str], waiting: list[str], since: float
    ) -> tuple[TruthCounts, TruthCounts, str]:
        """Joined truth for the field-accuracy verdict: the candidate on the canary devices since
        they passed; the baseline concurrent (the old version on devices not yet sent the release,
        same period) when it holds ``min_field_truth`` decisions, else the same devices before."""
        candidate = f"{r.name}@{r.version}"

        def counts(stmt: Any, *, model: str | None = None, exclude: str | None = None) -> TruthCounts:
            rows = [(d, (p or {}).get("data") or {}) for d, p in s.execute(stmt).all()]
            n = correct = 0
            for a in field_accuracy(rows):
                if (model is not None and a.model != model) or (exclude is not None and a.model == exclude):
                    continue
                n, correct = n + a.n, correct + a.correct
            return TruthCounts(n, correct)

        base = select(EventRow.device_id, EventRow.payload).where(EventRow.kind == JOINED)
        canary = counts(
            base.where(EventRow.device_id.in_(ids)).where(EventRow.at >= _dt(since)), model=candidate
        )
        if waiting:
            conc = counts(
                base.where(EventRow.device_id.in_(waiting)).where(EventRow.at >= _dt(since)),
                exclude=candidate,
            )
            if conc.n >= r.policy.min_field_truth:
                return canary, conc, "concurrent"
        before = counts(
            base.where(EventRow.device_id.in_(ids))
            .where(EventRow.at < _dt(r.started_at))
            .where(EventRow.at >= _dt(r.started_at) - timedelta(seconds=r.policy.baseline_window_s)),
            exclude=candidate,
        )
        return canary, before, "before"

    def _measure_shadow(self, s: Any, r: Rollout) -> dict[str, Any]:
        """The shadow blocks the phase's running devices reported for this candidate, merged."""
        assert r.shadow is not None
        ids = r.shadow.running()
        rows = s.execute(
            select(TelemetryRow.payload)
            .where(TelemetryRow.device_id.in_(ids))
            .where(TelemetryRow.received_at >= _dt(r.shadow.started_at))
        ).all()
        blocks = []
        for (payload,) in rows:
            b = (payload or {}).get("shadow") or {}
            cand = b.get("candidate") or {}
            if (
                b.get("role") == "candidate"
                and cand.get("name") == r.name
                and cand.get("version") == r.version
            ):
                blocks.append(b)
        return merge_blocks(blocks)

    def _publish(self, device_id: str, payload: bytes) -> None:
        if self.publisher is None:
            log.warning("no MQTT link: command for %s not sent", device_id)
            return
        self.publisher.publish(self.topics.device(device_id, "cmd"), payload)

    def _execute(self, r: Rollout, actions: list[Action]) -> None:
        issued = _dt(self.clock())
        for a in actions:
            if isinstance(a, SendDeploy):
                cmd = DeployCommand(
                    cmd_id=a.cmd_id,
                    name=r.name,
                    version=r.version,
                    rollout_id=r.id,
                    issued_at=issued,
                    sampling=r.policy.sampling,
                )
                self._publish(a.device_id, dump(cmd))
            elif isinstance(a, SendRollback):
                cmd_rb = RollbackCommand(
                    cmd_id=a.cmd_id, reason=a.reason[:500], rollout_id=r.id, issued_at=issued
                )
                self._publish(a.device_id, dump(cmd_rb))
            elif isinstance(a, SendShadowDeploy):
                cmd_sh = DeployCommand(
                    cmd_id=a.cmd_id,
                    name=r.name,
                    version=r.version,
                    rollout_id=r.id,
                    issued_at=issued,
                    mode="shadow",
                )
                self._publish(a.device_id, dump(cmd_sh))
            elif isinstance(a, SendStopShadow):
                self._publish(
                    a.device_id, dump(StopShadowCommand(cmd_id=a.cmd_id, rollout_id=r.id, issued_at=issued))
                )
            elif isinstance(a, RaiseAlert):
                halted = a.kind == "rollout.halted"
                self.alerts.raise_alert(
                    a.kind,
                    a.message,
                    severity="error" if halted else "warning",
                    rollout_id=r.id,
                    data=a.data,
                    dedup_key=f"rollout-halt:{r.id}"
                    if halted
                    else f"{a.kind}:{r.id}:{a.data.get('gate', '')}",
                )
