"""Pure probation judgement: the new model's telemetry windows against its manifest's gates.

A new model serves under probation for ``gates.window_s`` of its own telemetry. The verdict is:

- ``fail`` at once when an irreversible gate is broken (non-finite outputs beyond
  ``max_nonfinite``): more frames cannot undo it;
- otherwise ``undecided`` until the observed windows cover ``window_s`` *and* hold at least
  ``min_frames`` frames (a stopped line proves nothing either way, so the model stays on probation);
- then ``pass`` if every gate holds, else ``fail`` naming the broken gates.

The evidence (observed statistics next to the gates) goes into the rollback or probation event.
Windows that began before the swap are ignored: they mix the old model's frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from edge_agent.manifest import ProbationGates
from edge_agent.messages import Telemetry

Verdict = Literal["pass", "fail", "undecided"]


@dataclass(frozen=True)
class ProbationResult:
    verdict: Verdict
    failed_gates: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        if self.verdict != "fail":
            return ""
        return "probation gates failed: " + ", ".join(self.failed_gates)


def relevant_windows(
    windows: Sequence[Telemetry], *, since: datetime, model_sha256: str | None = None
) -> list[Telemetry]:
    """The windows that belong to the model under probation: started at/after the swap, its model."""
    out = []
    for w in windows:
        if w.window_start < since:
            continue
        if model_sha256 and w.model is not None and w.model.sha256 and w.model.sha256 != model_sha256:
            continue
        out.append(w)
    return out


def judge(gates: ProbationGates, windows: Sequence[Telemetry]) -> ProbationResult:
    """The verdict on the windows observed so far (already filtered by :func:`relevant_windows`)."""
    frames = sum(w.frames for w in windows)
    errors = sum(w.errors for w in windows)
    nonfinite = sum(w.nonfinite for w in windows)
    observed_s = sum(w.window_s for w in windows)
    attempts = frames + errors
    error_rate = errors / attempts if attempts else 0.0
    p99 = max((w.latency_ms_p99 for w in windows if w.frames), default=0.0)
    conf_p50 = sum(w.confidence_p50 * w.frames for w in windows) / frames if frames else 0.0
    low_rate = sum(w.low_confidence for w in windows) / frames if frames else 0.0
    evidence: dict[str, Any] = {
        "observed_s": round(observed_s, 3),
        "windows": len(windows),
        "frames": frames,
        "errors": errors,
        "error_rate": round(error_rate, 6),
        "nonfinite": nonfinite,
        "latency_ms_p99": round(p99, 3),
        "confidence_p50": round(conf_p50, 6),
        "low_confidence_rate": round(low_rate, 6),
        "gates": gates.model_dump(),
    }
    if nonfinite > gates.max_nonfinite:
        return ProbationResult("fail", ("max_nonfinite",), evidence)
    if observed_s < gates.window_s or frames < gates.min_frames:
        return ProbationResult("undecided", (), evidence)
    failed = []
    if error_rate > gates.max_error_rate:
        failed.append("max_error_rate")
    if p99 > gates.max_latency_p99_ms:
        failed.append("max_latency_p99_ms")
    if conf_p50 < gates.min_confidence_p50:
        failed.append("min_confidence_p50")
    if low_rate > gates.max_low_confidence_rate:
        failed.append("max_low_confidence_rate")
    if failed:
        return ProbationResult("fail", tuple(failed), evidence)
    return ProbationResult("pass", (), evidence)
