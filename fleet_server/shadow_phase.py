"""A rollout's shadow phase: the candidate runs beside the serving model before any robot acts on it.

Pure (no database, no MQTT, no clock). ``fleet rollout start shapes@2.1.0 --shadow 25%
--shadow-soak 5m --stages 1,25%,100%``: a share of the rollout's devices (``all`` allowed; not
counted in the serving stages' cumulative sizes) gets ``deploy`` with ``mode: shadow``::

    PENDING ──deploy(mode=shadow)──▶ SENT ──shadow.started──▶ RUNNING
                                      │──command.rejected──▶ UNABLE  (an agent that cannot shadow)
                                      └──update.rejected / update.failed──▶ FAILED (cannot verify or load it)

Once every shadow device has settled, the phase soaks for ``soak_s``; then the shell merges the
shadow blocks the RUNNING devices sent with their telemetry since the phase began, and the
agreement gates (:func:`edge_agent.agreement.judge_agreement`) decide:

- pass → every shadow device gets ``stop_shadow`` and the serving stages start as without a
  shadow phase (the candidate is removed from the devices: the serving stage fetches it again,
  which costs one download and keeps "what a device holds" simple);
- fail → the rollout halts with the evidence (agreement, confusion counts); nothing served it;
- inconclusive (too few frames after ``gate_timeout_s``, or no device could shadow) → the rollout
  pauses with an alert; an operator resumes it with an override (who, why), recorded; that
  verdict then counts as a pass and never pauses the rollout again.

An UNABLE device never counts as a pass; FAILED devices count against ``max_failure_rate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from edge_agent.agreement import judge_agreement
from edge_agent.verdicts import Verdict, combine


class ShadowStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    RUNNING = "running"
    UNABLE = "unable"  # the agent refused a shadow deploy (an older agent: command.rejected)
    FAILED = "failed"  # the candidate did not verify or load there
    STOPPED = "stopped"


SHADOW_SETTLED = frozenset({ShadowStatus.RUNNING, ShadowStatus.UNABLE, ShadowStatus.FAILED})


class ShadowDevice(BaseModel):
    device_id: str
    cmd_id: str
    status: ShadowStatus = ShadowStatus.PENDING
    sends: int = 0
    last_sent_at: float | None = None
    running_since: float | None = None
    reason: str = ""


class ShadowGates(BaseModel):
    """The agreement gates of a shadow phase (defaults: the server's; the CLI may override)."""

    min_agreement: float = 0.9
    min_frames: int = 50
    confidence: float = 0.95
    max_dimension_diff_mm: float | None = None


class ShadowPhase(BaseModel):
    """One rollout's shadow phase, serialised inside the rollout's document."""

    size: str
    soak_s: float
    devices: dict[str, ShadowDevice]
    gates: ShadowGates = ShadowGates()
    started_at: float
    settled_at: float | None = None
    state: str = "running"  # running | passed | failed | inconclusive | overridden
    evidence: dict[str, Any] = {}

    @classmethod
    def create(
        cls,
        rollout_id: str,
        device_ids: Sequence[str],
        size: str,
        soak_s: float,
        gates: ShadowGates,
        now: float,
    ) -> ShadowPhase:
        devices = {
            d: ShadowDevice(device_id=d, cmd_id=f"{rollout_id}-s{i}") for i, d in enumerate(device_ids)
        }
        return cls(size=size, soak_s=soak_s, devices=devices, gates=gates, started_at=now)

    @property
    def active(self) -> bool:
        return self.state in ("running", "inconclusive")

    def by_cmd_id(self, cmd_id: str) -> ShadowDevice | None:
        for p in self.devices.values():
            if p.cmd_id == cmd_id:
                return p
        return None

    def on_event(
        self, device_id: str, kind: str, now: float, *, cmd_id: str | None, reason: str = ""
    ) -> bool:
        """Apply a device's answer to its shadow deploy; True when anything changed."""
        p = self.devices.get(device_id)
        if p is None or cmd_id != p.cmd_id or p.status not in (ShadowStatus.SENT, ShadowStatus.PENDING):
            return False
        if kind == "shadow.started":
            p.status, p.running_since = ShadowStatus.RUNNING, now
        elif kind == "command.rejected":
            p.status, p.reason = ShadowStatus.UNABLE, reason or "the agent cannot run a shadow"
        elif kind in ("update.rejected", "update.failed"):
            p.status, p.reason = ShadowStatus.FAILED, reason or kind
        else:
            return False
        return True

    def settled(self) -> bool:
        return all(p.status in SHADOW_SETTLED for p in self.devices.values())

    def running(self) -> list[str]:
        return [d for d, p in self.devices.items() if p.status == ShadowStatus.RUNNING]

    def awaiting_verdict(self, now: float) -> bool:
        return (
            self.state == "running" and self.settled_at is not None and now >= self.settled_at + self.soak_s
        )

    def judge(self, merged: Mapping[str, Any] | None) -> list[Verdict]:
        """Verdicts on the merged shadow blocks of the RUNNING devices (None: nothing measured)."""
        if not self.running():
            return [
                Verdict(
                    "agreement",
                    "inconclusive",
                    "wilson",
                    0,
                    "no device could run the shadow",
                    {s: [d for d, p in self.devices.items() if p.status == s] for s in ("unable", "failed")},
                )
            ]
        g = self.gates
        return judge_agreement(
            merged or {},
            min_agreement=g.min_agreement,
            min_frames=g.min_frames,
            confidence=g.confidence,
            max_dimension_diff_mm=g.max_dimension_diff_mm,
        )


def shadow_outcome(verdicts: Sequence[Verdict]) -> str:
    """pass | fail | inconclusive for a set of shadow verdicts."""
    return combine(verdicts)


def evidence_of(merged: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a person reads about a shadow phase: the counts and the confusion matrix."""
    m = merged or {}
    return {
        k: m.get(k)
        for k in (
            "frames",
            "compared",
            "agree",
            "candidate_only",
            "intended",
            "errors",
            "nonfinite",
            "confusion",
        )
    }
