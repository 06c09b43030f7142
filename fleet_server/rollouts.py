"""The staged-rollout state machine: pure — no database, no MQTT, no clock (``now`` is an argument).

A rollout deploys ``name@version`` to a list of devices in stages (``"1,25%,100%"``: one
canary, then a quarter, then everyone; sizes are cumulative). For each stage::

    devices PENDING ──send deploy──▶ SENT ──update.*──▶ INSTALLING ──probation.started──▶ PROBATION
                                       │  (re-sent after resend_after_s, up to max_sends)      │
                                       └──────── update.failed / update.rejected / rollback ───┴─▶ FAILED
                                                                        probation.passed ───────▶ PASSED
    SENT / INSTALLING ──update.deferred──▶ DEFERRED ──update.installed / probation.*──▶ (on)

A DEFERRED device has a verified model staged and waits for its line's update window (the
agent's ``[line]`` policy). It neither fails nor times out while deferred: ``device_timeout_s``
counts only the time outside DEFERRED. Its stage does not settle until it moves on; a halt or
abort sends it a rollback (the agent then drops the staged model; rollbacks are never deferred).

When every device of the stage has settled (PASSED or FAILED) the stage soaks for ``soak_s``,
then the gates decide:

1. failure gate — failed / devices so far > ``max_failure_rate`` (checked on every tick: once
   it is exceeded no later success can bring it back, so the rollout halts at once);
2. quality gates — the passed devices' telemetry on the new version against the SAME devices'
   telemetry before the rollout: confidence p50 dropped by more than ``max_confidence_p50_drop``,
   or the low-confidence rate rose by more than ``max_low_confidence_rate_rise``.

Pass → next stage (or SUCCEEDED after the last). Fail → HALTED: every device that received the
release and has not already rolled itself back gets a ``rollback`` command, and an alert says why.
``pause`` stops sending and advancing (in-flight devices are still tracked); ``resume`` continues;
``abort`` stops for good (optionally rolling back). Every transition is idempotent, so replaying
an event after a crash changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from edge_agent.verdicts import Verdict, combine
from fleet_server.field_gate import TruthCounts, deciding, field_verdict, gate_outcome
from fleet_server.policy import Policy
from fleet_server.quality_verdicts import WindowSample, quality_verdicts
from fleet_server.shadow_phase import (
    ShadowGates,
    ShadowPhase,
    ShadowStatus,
    evidence_of,
)
from lineside_common.errors import ConfigError


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    ABORTED = "aborted"
    SUCCEEDED = "succeeded"


ACTIVE_STATES = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})


class DeviceStatus(StrEnum):
    WAITING = "waiting"  # in a later stage
    PENDING = "pending"  # its stage started; deploy not sent yet
    SENT = "sent"
    INSTALLING = "installing"
    DEFERRED = "deferred"  # staged, waiting for the line's update window
    PROBATION = "probation"
    PASSED = "passed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"  # the fleet sent a rollback after a halt/abort


_RANK = {
    DeviceStatus.WAITING: 0,
    DeviceStatus.PENDING: 0,
    DeviceStatus.SENT: 1,
    DeviceStatus.INSTALLING: 2,
    DeviceStatus.DEFERRED: 2,
    DeviceStatus.PROBATION: 3,
    DeviceStatus.PASSED: 4,
}
IN_FLIGHT = frozenset(
    {DeviceStatus.SENT, DeviceStatus.INSTALLING, DeviceStatus.DEFERRED, DeviceStatus.PROBATION}
)
SETTLED = frozenset({DeviceStatus.PASSED, DeviceStatus.FAILED, DeviceStatus.ROLLED_BACK})
FAILURE_EVENTS = frozenset({"update.failed", "update.rejected", "rollback"})
PROGRESS_EVENTS = {
    "update.started": DeviceStatus.INSTALLING,
    "update.verified": DeviceStatus.INSTALLING,
    "update.installed": DeviceStatus.INSTALLING,
    "probation.started": DeviceStatus.PROBATION,
    "probation.passed": DeviceStatus.PASSED,
}

# -- parsing operator input ---------------------------------------------------------------------


@dataclass(frozen=True)
class StageSize:
    """One stage's cumulative size: an absolute device count or a percentage of the rollout."""

    count: int | None = None
    percent: float | None = None

    def devices(self, total: int) -> int:
        if self.count is not None:
            return min(self.count, total)
        assert self.percent is not None
        return min(total, max(1, math.ceil(self.percent * total / 100.0 - 1e-9)))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


def parse_stages(text: str) -> list[StageSize]:
    """``"1,25%,100%"`` → stage sizes; ConfigError when a part is not a count or a percentage."""
    out: list[StageSize] = []
    for part in (p.strip() for p in text.split(",")):
        if part.endswith("%"):
            try:
                pct = float(part[:-1])
            except ValueError:
                raise ConfigError(f"stage {part!r} is not a percentage", field="stages") from None
            if not 0 < pct <= 100:
                raise ConfigError(f"stage {part!r} must be in (0%, 100%]", field="stages")
            out.append(StageSize(percent=pct))
        elif part.isdigit() and int(part) >= 1:
            out.append(StageSize(count=int(part)))
        else:
            raise ConfigError(f"stage {part!r} is not a device count (>= 1) or a percentage", field="stages")
    return out


def plan_stages(device_ids: Sequence[str], stages: Sequence[StageSize]) -> list[list[str]]:
    """Split devices into stages (each stage lists only its NEW devices); empty stages are dropped.

    Sizes are cumulative and never shrink: ``[1, 25%, 100%]`` over 8 devices → 1, 1, 6.
    """
    if len(set(device_ids)) != len(device_ids):
        raise ConfigError("a device is listed twice", field="devices")
    plan: list[list[str]] = []
    done = 0
    for stage in stages:
        upto = max(done, stage.devices(len(device_ids)))
        if upto > done:
            plan.append(list(device_ids[done:upto]))
            done = upto
    return plan


# -- quality ------------------------------------------------------------------------------------


class QualityStats(BaseModel):
    """Confidence summary of a set of telemetry windows."""

    frames: int = 0
    windows: int = 0
    confidence_p50: float = 0.0
    low_confidence_rate: float = 0.0


def summarize(windows: Iterable[tuple[int, float, int]]) -> QualityStats:
    """``(frames, confidence_p50, low_confidence)`` per window → frame-weighted summary.

    The p50 of the union is approximated by the frame-weighted mean of the windows' p50s
    (windows are short and similar; exact merging would need the histograms).
    """
    frames = windows_n = low = 0
    weighted = 0.0
    for f, p50, lo in windows:
        if f <= 0:
            continue
        frames += f
        windows_n += 1
        low += lo
        weighted += f * p50
    if frames == 0:
        return QualityStats()
    return QualityStats(
        frames=frames,
        windows=windows_n,
        confidence_p50=weighted / frames,
        low_confidence_rate=min(1.0, low / frames),
    )


def failure_gate(policy: Policy, failed: int, total: int) -> str | None:
    """The reason to halt, or None: failures over the threshold."""
    if total <= 0 or failed == 0:
        return None
    rate = failed / total
    if rate > policy.max_failure_rate:
        return (
            f"{failed} of {total} devices failed to install or pass probation "
            f"({rate:.0%} > max {policy.max_failure_rate:.0%})"
        )
    return None


def quality_gate(policy: Policy, baseline: QualityStats, current: QualityStats) -> str | None:
    """The reason to halt, or None: the new model's confidence is worse than before by too much."""
    drop = baseline.confidence_p50 - current.confidence_p50
    if drop > policy.max_confidence_p50_drop:
        return (
            f"confidence p50 dropped from {baseline.confidence_p50:.3f} to {current.confidence_p50:.3f} "
            f"(-{drop:.3f} > allowed {policy.max_confidence_p50_drop:.3f}) on the new version"
        )
    rise = current.low_confidence_rate - baseline.low_confidence_rate
    if rise > policy.max_low_confidence_rate_rise:
        return (
            f"low-confidence rate rose from {baseline.low_confidence_rate:.1%} to "
            f"{current.low_confidence_rate:.1%} (+{rise:.1%} > allowed "
            f"{policy.max_low_confidence_rate_rise:.1%}) on the new version"
        )
    return None


# -- actions the shell carries out --------------------------------------------------------------


@dataclass(frozen=True)
class SendDeploy:
    device_id: str
    cmd_id: str


@dataclass(frozen=True)
class SendRollback:
    device_id: str
    cmd_id: str
    reason: str


@dataclass(frozen=True)
class RaiseAlert:
    message: str
    data: dict[str, Any]
    kind: str = "rollout.halted"


@dataclass(frozen=True)
class SendShadowDeploy:
    device_id: str
    cmd_id: str


@dataclass(frozen=True)
class SendStopShadow:
    device_id: str
    cmd_id: str


Action = SendDeploy | SendRollback | RaiseAlert | SendShadowDeploy | SendStopShadow


@dataclass(frozen=True)
class QualityReport:
    """What the shell measured for ``Rollout.gate_devices()``: the baseline and the new version.

    With per-window samples the gate is statistical (:mod:`fleet_server.quality_verdicts`); a
    report of aggregates alone is judged by the thresholds of :func:`quality_gate`, recorded as
    test ``threshold``.
    """

    baseline: QualityStats
    current: QualityStats
    baseline_windows: tuple[WindowSample, ...] = ()
    current_windows: tuple[WindowSample, ...] = ()
    baseline_kind: str = "before"  # "concurrent": devices still on the old version, same period
    # Joined truth (fleet_server/field_gate.py): the candidate on the canary devices, the old
    # version on ``field_baseline_kind`` ("concurrent" or "before", chosen like the telemetry's).
    field_canary: TruthCounts = dc_field(default_factory=TruthCounts)
    field_baseline: TruthCounts = dc_field(default_factory=TruthCounts)
    field_baseline_kind: str = "before"


# -- the rollout --------------------------------------------------------------------------------


class DeviceProgress(BaseModel):
    device_id: str
    stage: int
    status: DeviceStatus = DeviceStatus.WAITING
    cmd_id: str
    sends: int = 0
    first_sent_at: float | None = None
    last_sent_at: float | None = None
    passed_at: float | None = None
    updated_at: float | None = None
    last_event: str | None = None
    reason: str = ""
    deferred_since: float | None = None  # set while DEFERRED
    deferred_total_s: float = 0.0  # time spent DEFERRED before now: not counted by device_timeout_s


class HistoryEntry(BaseModel):
    at: float
    text: str


class VerdictRecord(BaseModel):
    """One metric's verdict at one gate (``gate``: ``shadow`` or ``stage-N``), as stored and shown."""

    gate: str
    metric: str
    verdict: str
    test: str
    n: int
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    at: float


class Override(BaseModel):
    """A person resumed a rollout past an inconclusive verdict: who, why, when, which gate."""

    gate: str
    by: str
    why: str
    at: float


class Rollout(BaseModel):
    """One rollout's whole state; serialisable with ``model_dump(mode="json")``."""

    id: str
    name: str
    version: str
    state: RolloutState = RolloutState.RUNNING
    policy: Policy
    stage_sizes: list[str]
    stages: list[list[str]]
    devices: dict[str, DeviceProgress]
    stage: int = 0
    created_at: float
    started_at: float
    stage_started_at: float
    stage_settled_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    last_quality: QualityReport | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    shadow: ShadowPhase | None = None
    verdicts: list[VerdictRecord] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    awaiting_override: str | None = None  # the gate whose inconclusive verdict paused the rollout

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        rollout_id: str,
        name: str,
        version: str,
        device_ids: Sequence[str],
        stages: Sequence[StageSize],
        policy: Policy,
        now: float,
        *,
        shadow_devices: Sequence[str] = (),
        shadow_size: str = "",
        shadow_soak_s: float = 0.0,
        shadow_gates: ShadowGates | None = None,
    ) -> Rollout:
        if not device_ids:
            raise ConfigError("the rollout has no devices", field="devices")
        if not stages:
            raise ConfigError("the rollout has no stages", field="stages")
        plan = plan_stages(device_ids, stages)
        devices: dict[str, DeviceProgress] = {}
        n = 0
        for i, members in enumerate(plan):
            for d in members:
                # The same cmd_id on every re-send: agents are idempotent on it.
                devices[d] = DeviceProgress(device_id=d, stage=i, cmd_id=f"{rollout_id}-{n}")
                n += 1
        r = cls(
            id=rollout_id,
            name=name,
            version=version,
            policy=policy,
            stage_sizes=[str(s) for s in stages],
            stages=plan,
            devices=devices,
            created_at=now,
            started_at=now,
            stage_started_at=now,
        )
        r._log(now, f"created: {name}@{version} to {len(devices)} devices in {len(plan)} stages")
        if shadow_devices:
            r.shadow = ShadowPhase.create(
                rollout_id, shadow_devices, shadow_size, shadow_soak_s, shadow_gates or ShadowGates(), now
            )
            r._log(now, f"shadow phase started: {len(shadow_devices)} devices, soak {shadow_soak_s:g}s")
        else:
            r._open_stage(0, now)
        return r

    # -- queries -------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def stage_devices(self, stage: int) -> list[DeviceProgress]:
        return [self.devices[d] for d in self.stages[stage]]

    def devices_so_far(self) -> list[DeviceProgress]:
        return [p for i in range(self.stage + 1) for p in self.stage_devices(i)]

    def by_cmd_id(self, cmd_id: str) -> DeviceProgress | None:
        for p in self.devices.values():
            if p.cmd_id == cmd_id:
                return p
        return None

    def stage_settled(self) -> bool:
        return all(p.status in SETTLED for p in self.stage_devices(self.stage))

    def gate_devices(self) -> list[DeviceProgress]:
        """Devices whose telemetry the quality gate judges: those that passed, so far."""
        return [p for p in self.devices_so_far() if p.status == DeviceStatus.PASSED]

    def in_shadow_phase(self) -> bool:
        return self.shadow is not None and self.shadow.active

    def awaiting_shadow_verdict(self, now: float) -> bool:
        """True when the next ``tick`` would judge the shadow phase (the shell merges its blocks)."""
        return (
            self.state == RolloutState.RUNNING
            and self.shadow is not None
            and self.shadow.awaiting_verdict(now)
        )

    def awaiting_gate(self, now: float) -> bool:
        """True when the next ``tick`` would judge quality (so the shell should measure it)."""
        return (
            not self.in_shadow_phase()
            and self.state == RolloutState.RUNNING
            and self.stage_settled_at is not None
            and now >= self.stage_settled_at + self.policy.soak_s
            and bool(self.gate_devices())
        )

    def summary(self) -> dict[str, Any]:
        """Per-stage counts by status, for people and the API."""
        out = []
        for i, members in enumerate(self.stages):
            counts: dict[str, int] = {}
            for d in members:
                s = self.devices[d].status.value
                counts[s] = counts.get(s, 0) + 1
            out.append(
                {
                    "stage": i,
                    "size": self.stage_sizes[i] if i < len(self.stage_sizes) else "",
                    "devices": len(members),
                    "counts": counts,
                }
            )
        return {"stages": out}

    # -- transitions ---------------------------------------------------------------------------

    def _log(self, now: float, text: str) -> None:
        self.history.append(HistoryEntry(at=now, text=text))

    def _open_stage(self, stage: int, now: float) -> None:
        self.stage = stage
        self.stage_started_at = now
        self.stage_settled_at = None
        for p in self.stage_devices(stage):
            if p.status == DeviceStatus.WAITING:
                p.status = DeviceStatus.PENDING
                p.updated_at = now
        self._log(now, f"stage {stage + 1}/{len(self.stages)} started: {len(self.stages[stage])} devices")

    def on_event(
        self, device_id: str, kind: str, now: float, *, cmd_id: str | None = None, reason: str = ""
    ) -> bool:
        """Apply one device event; True when it changed anything. Events from strangers are ignored,
        and so is everything once the rollout has ended (a late duplicate must not rewrite history)."""
        if not self.active:
            return False
        if self.shadow is not None and cmd_id is not None and self.shadow.by_cmd_id(cmd_id) is not None:
            changed = self.shadow.on_event(device_id, kind, now, cmd_id=cmd_id, reason=reason)
            if changed:
                self._log(now, f"shadow: {device_id} {self.shadow.devices[device_id].status.value}")
            return changed
        p = self.devices.get(device_id)
        if p is None or (cmd_id is not None and cmd_id != p.cmd_id):
            return False
        if p.status in (DeviceStatus.WAITING, DeviceStatus.PENDING, DeviceStatus.ROLLED_BACK):
            return False
        if kind == "update.deferred":
            if p.status not in (DeviceStatus.SENT, DeviceStatus.INSTALLING, DeviceStatus.DEFERRED):
                return False  # late or duplicate: it already moved on
            if p.status != DeviceStatus.DEFERRED:
                p.status, p.deferred_since = DeviceStatus.DEFERRED, now
            elif p.reason == (reason or kind):
                return False
            p.reason = reason or kind
        elif p.status == DeviceStatus.DEFERRED and (kind in FAILURE_EVENTS or kind in PROGRESS_EVENTS):
            if kind in ("update.started", "update.verified"):
                return False  # a re-delivered earlier step: still waiting
            self._leave_deferred(p, now)
            if kind in FAILURE_EVENTS:
                p.status, p.reason = DeviceStatus.FAILED, reason or kind
            else:
                target = PROGRESS_EVENTS[kind]
                p.status = target if _RANK[target] > _RANK[DeviceStatus.DEFERRED] else DeviceStatus.INSTALLING
                p.reason = ""
                if target == DeviceStatus.PASSED:
                    p.passed_at = now
        elif kind in FAILURE_EVENTS:
            if p.status == DeviceStatus.FAILED:
                return False
            p.status = DeviceStatus.FAILED
            p.reason = reason or kind
        elif kind in PROGRESS_EVENTS:
            target = PROGRESS_EVENTS[kind]
            if p.status == DeviceStatus.FAILED or _RANK[target] <= _RANK[p.status]:
                return False  # never backwards (duplicates and reordering are harmless)
            p.status = target
            if target == DeviceStatus.PASSED:
                p.passed_at = now
        else:
            return False
        p.last_event = kind
        p.updated_at = now
        return True

    @staticmethod
    def _leave_deferred(p: DeviceProgress, now: float) -> None:
        if p.deferred_since is not None:
            p.deferred_total_s += max(0.0, now - p.deferred_since)
            p.deferred_since = None

    def on_restart(self, device_id: str, since: float, now: float) -> bool:
        """A DEFERRED device whose agent started (state ``since``) after it deferred has lost the
        staged model (staging is not kept across restarts): send the deploy again. Without this a
        restarted robot would stay DEFERRED for ever, since deferral never times out."""
        p = self.devices.get(device_id)
        if p is None or p.status != DeviceStatus.DEFERRED or p.deferred_since is None:
            return False
        if since <= p.deferred_since:
            return False
        self._leave_deferred(p, now)
        p.status, p.updated_at = DeviceStatus.SENT, now
        p.last_sent_at = now - self.policy.resend_after_s  # the next tick re-sends at once
        p.reason = "the agent restarted while deferred; deploy re-sent"
        return True

    def on_state(
        self, device_id: str, active_version: str | None, probation: bool, since: float, now: float
    ) -> bool:
        """The device's retained state as a fallback when its events were lost: it runs the new
        version, out of probation, in a state published after our first deploy → it passed."""
        p = self.devices.get(device_id)
        if p is None or p.status not in IN_FLIGHT or p.first_sent_at is None:
            return False
        if active_version != self.version or probation or since < p.first_sent_at:
            return False
        p.status, p.passed_at, p.updated_at = DeviceStatus.PASSED, now, now
        p.last_event = "state"
        return True

    def tick(
        self,
        now: float,
        quality: QualityReport | None = None,
        shadow_report: dict[str, Any] | None = None,
        *,
        max_unanswered: int | None = None,
    ) -> list[Action]:
        """Advance with the clock; ``quality`` is the shell's measurement when ``awaiting_gate``,
        ``shadow_report`` the merged shadow blocks when ``awaiting_shadow_verdict``.

        ``max_unanswered`` paces a large stage: a first deploy goes out only while fewer devices
        than that are SENT (sent, nothing heard yet); the rest stay PENDING for a later tick. A
        device's resends and timeout count from its own first send, so a paced device is never
        judged on time it spent waiting for its turn."""
        if self.state != RolloutState.RUNNING:
            return []
        if self.shadow is not None and self.shadow.state == "running":
            return self._tick_shadow(now, shadow_report, max_unanswered)
        actions: list[Action] = []
        unanswered = (
            sum(1 for p in self.stage_devices(self.stage) if p.status == DeviceStatus.SENT)
            if max_unanswered is not None
            else 0
        )
        for p in self.stage_devices(self.stage):
            if p.status == DeviceStatus.PENDING:
                if max_unanswered is not None and unanswered >= max_unanswered:
                    continue  # its turn comes as earlier devices answer
                unanswered += 1
                p.status = DeviceStatus.SENT
                p.sends, p.first_sent_at, p.last_sent_at, p.updated_at = 1, now, now, now
                actions.append(SendDeploy(p.device_id, p.cmd_id))
            elif (
                p.status == DeviceStatus.SENT
                and now - (p.last_sent_at if p.last_sent_at is not None else now)
                >= self.policy.resend_after_s
            ):
                if p.sends >= self.policy.max_sends:
                    p.status, p.reason, p.updated_at = (
                        DeviceStatus.FAILED,
                        f"no answer after {p.sends} deploy commands",
                        now,
                    )
                else:
                    p.sends += 1
                    p.last_sent_at = p.updated_at = now
                    actions.append(SendDeploy(p.device_id, p.cmd_id))
            if (
                p.status in IN_FLIGHT
                and p.status != DeviceStatus.DEFERRED  # waiting for the line is not being late
                and now - (p.first_sent_at if p.first_sent_at is not None else now) - p.deferred_total_s
                >= self.policy.device_timeout_s
            ):
                p.status, p.reason, p.updated_at = (
                    DeviceStatus.FAILED,
                    f"not done after {self.policy.device_timeout_s:g}s",
                    now,
                )

        so_far = self.devices_so_far()
        failed = sum(1 for p in so_far if p.status == DeviceStatus.FAILED)
        reason = failure_gate(self.policy, failed, len(so_far))
        if reason is not None:
            return actions + self.halt(reason, now)
        if not self.stage_settled():
            return actions
        if self.stage_settled_at is None:
            self.stage_settled_at = now
            self._log(now, f"stage {self.stage + 1} settled; soaking {self.policy.soak_s:g}s")
        if now < self.stage_settled_at + self.policy.soak_s:
            return actions
        if self.gate_devices():
            if quality is None:
                return actions  # the shell measures on the next tick
            self.last_quality = QualityReport(
                quality.baseline, quality.current, baseline_kind=quality.baseline_kind
            )
            if quality.current.frames < max(1, self.policy.min_gate_frames):
                if now >= self.stage_settled_at + self.policy.soak_s + self.policy.gate_timeout_s:
                    return actions + self.halt(
                        f"not enough telemetry on the new version to judge quality "
                        f"({quality.current.frames} frames < {self.policy.min_gate_frames})",
                        now,
                    )
                return actions
            if quality.baseline.frames < max(1, self.policy.min_gate_frames):
                gate = "baseline"  # one verdict for the whole rollout: an override covers every stage
                why = (
                    f"no baseline: {quality.baseline.frames} frames of telemetry before the rollout "
                    f"(< {self.policy.min_gate_frames})"
                )
                if self.policy.no_baseline == "pass":
                    self._record(
                        gate, [Verdict("baseline", "pass", "policy", 0, f"{why}; the policy says pass")], now
                    )
                    self._log(now, f"{why}: passed because the rollout's policy says no_baseline=pass")
                elif not self._overridden(gate):
                    self._record(gate, [Verdict("baseline", "inconclusive", "none", 0, why)], now)
                    return actions + self._pause_inconclusive(gate, why, now)
            elif quality.current_windows:
                gate = f"stage-{self.stage + 1}"
                verdicts = quality_verdicts(
                    self.policy,
                    quality.baseline_windows,
                    quality.current_windows,
                    baseline_kind=quality.baseline_kind,
                )
                verdicts.append(
                    field_verdict(
                        quality.field_canary,
                        quality.field_baseline,
                        max_drop=self.policy.max_field_accuracy_drop,
                        min_n=self.policy.min_field_truth,
                        baseline_kind=quality.field_baseline_kind,
                    )
                )
                outcome = gate_outcome(verdicts)
                deadline = self.stage_settled_at + self.policy.soak_s + self.policy.gate_timeout_s
                if outcome == "inconclusive" and now < deadline and not self._overridden(gate):
                    return actions  # more windows are coming: judge again on the next tick
                self._record(gate, verdicts, now)
                if outcome == "fail":
                    why = "; ".join(
                        f"{v.metric.replace('_', ' ')} {v.reason} ({v.test})"
                        for v in deciding(verdicts, "fail")
                    )
                    return actions + self.halt(f"{why}, against a {quality.baseline_kind} baseline", now)
                if outcome == "inconclusive" and not self._overridden(gate):
                    why = "; ".join(f"{v.metric}: {v.reason}" for v in deciding(verdicts, "inconclusive"))
                    return actions + self._pause_inconclusive(gate, why, now)
            else:
                reason = quality_gate(self.policy, quality.baseline, quality.current)
                self._record(
                    f"stage-{self.stage + 1}",
                    [
                        Verdict(
                            "quality",
                            "fail" if reason else "pass",
                            "threshold",
                            quality.current.frames,
                            reason or "within the thresholds",
                        )
                    ],
                    now,
                )
                if reason is not None:
                    return actions + self.halt(reason, now)
        if self.stage + 1 >= len(self.stages):
            self.state = RolloutState.SUCCEEDED
            self.finished_at = now
            self._log(
                now,
                f"succeeded: {sum(1 for p in self.devices.values() if p.status == DeviceStatus.PASSED)} devices run {self.version}",
            )
            return actions
        self._log(now, f"stage {self.stage + 1} passed its gates")
        self._open_stage(self.stage + 1, now)
        return actions + self.tick(now, max_unanswered=max_unanswered)

    def _roll_back(self, reason: str, now: float) -> list[Action]:
        actions: list[Action] = []
        for p in self.devices.values():
            if p.status in IN_FLIGHT or p.status == DeviceStatus.PASSED:
                p.status, p.updated_at = DeviceStatus.ROLLED_BACK, now
                p.reason = reason
                actions.append(SendRollback(p.device_id, f"{p.cmd_id}-rb", reason))
            elif p.status in (DeviceStatus.PENDING, DeviceStatus.WAITING):
                p.reason = "never sent: the rollout stopped"
        return actions

    def halt(self, reason: str, now: float) -> list[Action]:
        """Stop, roll back every device that received the release, and raise an alert."""
        if not self.active:
            return []
        self.state, self.reason, self.finished_at = RolloutState.HALTED, reason, now
        self._log(now, f"halted at stage {self.stage + 1}: {reason}")
        actions = self._roll_back(reason, now)
        rolled = [a.device_id for a in actions if isinstance(a, SendRollback)]
        return [
            *actions,
            RaiseAlert(
                f"rollout {self.id} of {self.name}@{self.version} halted at stage {self.stage + 1}/"
                f"{len(self.stages)}: {reason}; rolled back: {', '.join(rolled) or 'none'}",
                {"reason": reason, "stage": self.stage, "rolled_back": rolled},
            ),
        ]

    def pause(self, now: float) -> bool:
        if self.state != RolloutState.RUNNING:
            return False
        self.state = RolloutState.PAUSED
        self._log(now, "paused")
        return True

    def resume(self, now: float, *, by: str = "", why: str = "") -> bool:
        """Continue; past an inconclusive verdict only with ``why`` (an override, recorded with ``by``).

        ConfigError when the override's reason is missing.
        """
        if self.state != RolloutState.PAUSED:
            return False
        gate = self.awaiting_override
        if gate is not None:
            if not why.strip():
                raise ConfigError(
                    f"the rollout paused on an inconclusive verdict ({gate}); resuming overrides it: give a reason",
                    field="why",
                )
            self.overrides.append(Override(gate=gate, by=by or "unknown", why=why.strip(), at=now))
            self.awaiting_override = None
            if gate == "shadow" and self.shadow is not None:
                self.shadow.state = "running"
            self._log(now, f"override of the inconclusive {gate} verdict by {by or 'unknown'}: {why.strip()}")
        self.state = RolloutState.RUNNING
        self._log(now, "resumed")
        return True

    # -- verdicts and the shadow phase -------------------------------------------------------------

    def _overridden(self, gate: str) -> bool:
        return any(o.gate == gate for o in self.overrides)

    def _record(self, gate: str, verdicts: Sequence[Verdict], now: float) -> None:
        """Store this gate's verdicts (a re-judgement replaces the earlier ones of the same gate)."""
        self.verdicts = [v for v in self.verdicts if v.gate != gate] + [
            VerdictRecord(
                gate=gate,
                metric=v.metric,
                verdict=v.value,
                test=v.test,
                n=v.n,
                reason=v.reason,
                evidence=v.evidence,
                at=now,
            )
            for v in verdicts
        ]

    def _pause_inconclusive(self, gate: str, why: str, now: float) -> list[Action]:
        self.state = RolloutState.PAUSED
        self.awaiting_override = gate
        self.reason = f"inconclusive at {gate}: {why}"
        self._log(now, f"paused: {self.reason} (resume with a reason to override, or abort)")
        return [
            RaiseAlert(
                f"rollout {self.id} of {self.name}@{self.version} paused: {gate} is inconclusive ({why}); "
                f"resume with a reason to override it, or abort",
                {"gate": gate, "reason": why},
                kind="rollout.inconclusive",
            )
        ]

    def _stop_shadows(self, now: float) -> list[Action]:
        assert self.shadow is not None
        actions: list[Action] = []
        for p in self.shadow.devices.values():
            if p.status in (ShadowStatus.RUNNING, ShadowStatus.SENT):
                p.status = ShadowStatus.STOPPED
                actions.append(SendStopShadow(p.device_id, f"{p.cmd_id}-stop"))
        return actions

    def _tick_shadow(
        self, now: float, report: dict[str, Any] | None, max_unanswered: int | None = None
    ) -> list[Action]:
        ph = self.shadow
        assert ph is not None
        actions: list[Action] = []
        for p in ph.devices.values():
            if p.status == ShadowStatus.PENDING:
                p.status, p.sends, p.last_sent_at = ShadowStatus.SENT, 1, now
                actions.append(SendShadowDeploy(p.device_id, p.cmd_id))
            elif (
                p.status == ShadowStatus.SENT and now - (p.last_sent_at or now) >= self.policy.resend_after_s
            ):
                if p.sends >= self.policy.max_sends:
                    p.status, p.reason = ShadowStatus.UNABLE, f"no answer after {p.sends} shadow deploys"
                else:
                    p.sends, p.last_sent_at = p.sends + 1, now
                    actions.append(SendShadowDeploy(p.device_id, p.cmd_id))
        failed = sum(1 for p in ph.devices.values() if p.status == ShadowStatus.FAILED)
        reason = failure_gate(self.policy, failed, len(ph.devices))
        if reason is not None:
            ph.state = "failed"
            return actions + self._stop_shadows(now) + self.halt(f"shadow phase: {reason}", now)
        if not ph.settled():
            return actions
        if ph.settled_at is None:
            ph.settled_at = now
            self._log(now, f"shadow phase settled ({len(ph.running())} running); soaking {ph.soak_s:g}s")
        if now < ph.settled_at + ph.soak_s or report is None:
            return actions
        verdicts = ph.judge(report)
        outcome = combine(verdicts)
        short = [v for v in verdicts if v.value == "inconclusive" and v.n < ph.gates.min_frames]
        if short and ph.running() and now < ph.settled_at + ph.soak_s + self.policy.gate_timeout_s:
            return actions  # more frames are coming: judge again on the next tick
        self._record("shadow", verdicts, now)
        ph.evidence = evidence_of(report)
        if outcome == "fail":
            ph.state = "failed"
            why = "; ".join(f"{v.metric} {v.reason}" for v in verdicts if v.value == "fail")
            return actions + self._stop_shadows(now) + self.halt(f"shadow phase failed: {why}", now)
        if outcome == "inconclusive":
            if not self._overridden("shadow"):
                ph.state = "inconclusive"
                why = "; ".join(f"{v.metric}: {v.reason}" for v in verdicts if v.value == "inconclusive")
                return actions + self._pause_inconclusive("shadow", why, now)
            ph.state = "overridden"
        else:
            ph.state = "passed"
        self._log(now, f"shadow phase {ph.state}: the serving stages start")
        actions += self._stop_shadows(now)
        self._open_stage(0, now)
        return actions + self.tick(now, max_unanswered=max_unanswered)

    def abort(self, now: float, *, rollback: bool = False) -> list[Action]:
        """Stop for good; with ``rollback`` the devices that received the release go back too."""
        if not self.active:
            return []
        self.state, self.finished_at = RolloutState.ABORTED, now
        self.reason = "aborted by an operator"
        self._log(now, "aborted" + (" with rollback" if rollback else ""))
        stops = self._stop_shadows(now) if self.shadow is not None else []
        if rollback:
            return stops + self._roll_back("rollout aborted", now)
        return stops
