"""Canary versus baseline on telemetry windows: one statistical verdict per metric. Pure.

The rollout's quality gate compares the devices that passed probation on the new version (the
canary) with a baseline: preferably a **concurrent** one — devices of the same rollout still on
the old version over the same period, so a change of packages on the line moves both sides —
else the same devices **before** the rollout. Per metric (:mod:`edge_agent.verdicts`):

- ``confidence_p50``: Mann-Whitney U over the per-window medians — did it drop by more than
  ``max_confidence_p50_drop``? (at least ``min_gate_windows`` windows a side);
- ``low_confidence_rate``: Newcombe interval of the rise in the share of low-confidence frames,
  against ``max_low_confidence_rate_rise`` (at least ``min_gate_frames`` frames a side);
- ``error_rate``: the same for inference errors, against ``max_error_rate_rise``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from edge_agent.verdicts import Verdict, rate_rise_at_most, shift_at_most


class WindowSample(BaseModel):
    """One telemetry window's numbers the gates need."""

    frames: int
    confidence_p50: float
    low_confidence: int
    errors: int = 0


def quality_verdicts(
    policy: Any, baseline: Sequence[WindowSample], current: Sequence[WindowSample], *, baseline_kind: str
) -> list[Verdict]:
    """The verdicts of one gate; ``policy`` is the rollout's Policy."""
    base = [w for w in baseline if w.frames > 0]
    cur = [w for w in current if w.frames > 0]

    def tot(ws: Sequence[WindowSample], attr: str) -> int:
        return sum(int(getattr(w, attr)) for w in ws)

    out = [
        shift_at_most(
            "confidence_p50",
            [w.confidence_p50 for w in base],
            [w.confidence_p50 for w in cur],
            max_drop=policy.max_confidence_p50_drop,
            min_n=policy.min_gate_windows,
        ),
        rate_rise_at_most(
            "low_confidence_rate",
            tot(base, "low_confidence"),
            tot(base, "frames"),
            tot(cur, "low_confidence"),
            tot(cur, "frames"),
            max_rise=policy.max_low_confidence_rate_rise,
            min_n=policy.min_gate_frames,
        ),
        rate_rise_at_most(
            "error_rate",
            tot(base, "errors"),
            tot(base, "frames") + tot(base, "errors"),
            tot(cur, "errors"),
            tot(cur, "frames") + tot(cur, "errors"),
            max_rise=policy.max_error_rate_rise,
            min_n=policy.min_gate_frames,
        ),
    ]
    for v in out:
        v.evidence["baseline_kind"] = baseline_kind
    return out
