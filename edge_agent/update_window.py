"""When may a staged model be swapped in? A pure policy over the line's state — no clock, no I/O.

A packaging line does not want its model changed mid-run. PackML (OPC 30050) gives lines a
common state model; changeovers happen outside Execute. The device is told its line's state
(:mod:`edge_agent.line_state`) and this module decides, for a candidate that is verified,
self-tested and ready to serve::

    no window configured (allowed_states = None) ─────────────▶ swap   (any_state: the default)
    changeover flag set and changeover allowed ───────────────▶ swap   (changeover)
    state in allowed_states ──────────────────────────────────▶ swap   (allowed_state)
    waited ≥ deadline_s, at_deadline = "proceed" ──────────────▶ swap   (deadline_proceed)
    waited ≥ deadline_s, at_deadline = "wait" ─────────────────▶ defer  (deadline_passed, alert)
    state unknown (never told, or a value we cannot read) ────▶ defer  (state_unknown)
    otherwise ────────────────────────────────────────────────▶ defer  (state_not_allowed)

An unknown state is treated like a state that is not allowed: not knowing whether the line runs
must not be read as "it is safe". Only the deadline (with ``proceed``) swaps without a known,
allowed state, and then the event says so. Rollbacks never pass through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# PackML-like states (OPC 30050 names, lower-cased). "unknown" is ours: nothing (valid) heard yet.
LINE_STATES: tuple[str, ...] = (
    "execute",
    "idle",
    "held",
    "suspended",
    "stopped",
    "complete",
    "aborted",
)
UNKNOWN = "unknown"

AtDeadline = Literal["wait", "proceed"]
SwapReason = Literal["any_state", "changeover", "allowed_state", "deadline_proceed"]
DeferReason = Literal["state_not_allowed", "state_unknown", "deadline_passed"]


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """Which line states a swap may happen in, and what happens when waiting lasts too long.

    ``allowed_states`` None: any state (no window; nothing changes for lines that don't opt in).
    ``deadline_s`` None: wait forever. ``at_deadline``: ``wait`` keeps waiting and raises an alert,
    ``proceed`` swaps anyway (and says so).
    """

    allowed_states: frozenset[str] | None = None
    changeover_allowed: bool = True
    deadline_s: float | None = None
    at_deadline: AtDeadline = "wait"

    def __post_init__(self) -> None:
        if self.allowed_states is not None:
            bad = sorted(s for s in self.allowed_states if s not in LINE_STATES)
            if bad:
                raise ValueError(f"unknown line state(s) {bad}; known: {', '.join(LINE_STATES)}")
        if self.deadline_s is not None and self.deadline_s < 0:
            raise ValueError("deadline_s must be >= 0")


@dataclass(frozen=True, slots=True)
class Swap:
    """Swap now, for this reason."""

    reason: SwapReason


@dataclass(frozen=True, slots=True)
class Defer:
    """Do not swap yet. ``alert``: the deadline passed and the policy says keep waiting."""

    reason: DeferReason
    alert: bool = False


Verdict = Swap | Defer


def decide(policy: WindowPolicy, state: str, changeover: bool, waited_s: float) -> Verdict:
    """The verdict for a staged candidate that has waited ``waited_s`` with the line in ``state``."""
    if policy.allowed_states is None:
        return Swap("any_state")
    if changeover and policy.changeover_allowed:
        return Swap("changeover")
    if state in policy.allowed_states:
        return Swap("allowed_state")
    if policy.deadline_s is not None and waited_s >= policy.deadline_s:
        if policy.at_deadline == "proceed":
            return Swap("deadline_proceed")
        return Defer("deadline_passed", alert=True)
    return Defer("state_unknown" if state == UNKNOWN else "state_not_allowed")
