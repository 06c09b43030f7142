"""Pure state machine of the model store: what ``state.json`` becomes after each step.

No files, clocks or sockets: :mod:`edge_agent.store` carries the decisions out, and the tests
enumerate them (hypothesis). The invariants every transition keeps:

- ``previous`` is always a committed model (one that passed probation, or the first install);
- ``active`` and ``previous`` are never the same bundle;
- ``probation`` implies there is a ``previous`` to roll back to;
- once a model is active, some model stays active (nothing ever leaves the device with none);
- a version that failed probation is in ``failed`` and never becomes active again by a rollback;
- ``highest`` only grows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edge_agent.manifest import version_key
from lineside_common.errors import StoreError

MAX_SEEN_COMMANDS = 64
STATE_FORMAT = 1


@dataclass(frozen=True)
class BundleRef:
    """A verified bundle in the store: its manifest's sha256 names its directory."""

    sha256: str
    name: str
    version: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, str]:
        return {"sha256": self.sha256, "name": self.name, "version": self.version}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BundleRef:
        return cls(sha256=str(d["sha256"]), name=str(d["name"]), version=str(d["version"]))


@dataclass(frozen=True)
class StoreState:
    """Everything ``state.json`` holds."""

    active: BundleRef | None = None
    previous: BundleRef | None = None
    highest: Mapping[str, str] = field(default_factory=dict)
    failed: frozenset[str] = frozenset()
    probation: bool = False
    boot_count: int = 0  # starts of the agent while the active model is on probation
    probation_cmd_id: str | None = None
    probation_rollout_id: str | None = None
    seen_commands: tuple[str, ...] = ()
    # What a local tool (``edge-agent rollback``) last did, for the running daemon to report as
    # the right event: {"kind": "rollback", "reason": ..., "active": sha256, "from": {ref}}.
    local_change: Mapping[str, Any] | None = None

    def referenced(self) -> set[str]:
        """Bundle hashes that must stay on disk."""
        return {r.sha256 for r in (self.active, self.previous) if r is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "active": self.active.to_dict() if self.active else None,
            "previous": self.previous.to_dict() if self.previous else None,
            "highest": dict(self.highest),
            "failed": sorted(self.failed),
            "probation": self.probation,
            "boot_count": self.boot_count,
            "probation_cmd_id": self.probation_cmd_id,
            "probation_rollout_id": self.probation_rollout_id,
            "seen_commands": list(self.seen_commands),
            "local_change": dict(self.local_change) if self.local_change else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StoreState:
        try:
            if d.get("format") != STATE_FORMAT:
                raise StoreError(f"state.json format {d.get('format')!r} is not {STATE_FORMAT}")
            return cls(
                active=BundleRef.from_dict(d["active"]) if d.get("active") else None,
                previous=BundleRef.from_dict(d["previous"]) if d.get("previous") else None,
                highest={str(k): str(v) for k, v in dict(d.get("highest", {})).items()},
                failed=frozenset(str(x) for x in d.get("failed", [])),
                probation=bool(d.get("probation", False)),
                boot_count=int(d.get("boot_count", 0)),
                probation_cmd_id=d.get("probation_cmd_id"),
                probation_rollout_id=d.get("probation_rollout_id"),
                seen_commands=tuple(str(x) for x in d.get("seen_commands", [])),
                local_change=dict(d["local_change"]) if d.get("local_change") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"state.json is malformed: {exc}") from exc


class TransitionError(StoreError):
    """The requested step is not possible from this state (e.g. rollback with nothing to go back to)."""


def _higher(highest: Mapping[str, str], ref: BundleRef) -> dict[str, str]:
    out = dict(highest)
    cur = out.get(ref.name)
    if cur is None or version_key(ref.version) > version_key(cur):
        out[ref.name] = ref.version
    return out


def install(
    state: StoreState, new: BundleRef, *, cmd_id: str | None = None, rollout_id: str | None = None
) -> StoreState:
    """``new`` becomes active. It goes on probation when there is a committed model to fall back to.

    Installing over a model that is itself still on probation drops that unproven model: the
    rollback target stays the last committed one.
    """
    if state.active is not None and state.active.sha256 == new.sha256:
        return state
    fallback = state.previous if state.probation else state.active
    if fallback is not None and fallback.sha256 == new.sha256:
        # Re-installing the rollback target is a rollback to it, committed at once.
        fallback = None
    return replace(
        state,
        active=new,
        previous=fallback,
        highest=_higher(state.highest, new),
        failed=state.failed - {new.ref},  # an explicit (forced) reinstall clears the mark
        probation=fallback is not None,
        boot_count=0,
        probation_cmd_id=cmd_id if fallback is not None else None,
        probation_rollout_id=rollout_id if fallback is not None else None,
        local_change=None,  # an install is reported as one, whatever a local rollback noted before
    )


def commit(state: StoreState) -> StoreState:
    """Probation passed: the active model is committed."""
    if not state.probation:
        raise TransitionError("nothing is on probation")
    return replace(state, probation=False, boot_count=0, probation_cmd_id=None, probation_rollout_id=None)


def fail_probation(state: StoreState) -> StoreState:
    """Probation failed (or the agent crash-looped): back to ``previous``, and mark the failed version."""
    if not state.probation or state.previous is None or state.active is None:
        raise TransitionError("nothing is on probation")
    return replace(
        state,
        active=state.previous,
        previous=None,
        failed=state.failed | {state.active.ref},
        probation=False,
        boot_count=0,
        probation_cmd_id=None,
        probation_rollout_id=None,
    )


def rollback(state: StoreState) -> StoreState:
    """An operator's or the fleet's rollback: during probation it fails the new model; otherwise
    active and previous change places (so a rollback can itself be undone)."""
    if state.probation:
        return fail_probation(state)
    if state.previous is None or state.active is None:
        raise TransitionError("there is no previous model to roll back to")
    return replace(state, active=state.previous, previous=state.active, boot_count=0)


def boot(state: StoreState, *, crash_loop_threshold: int) -> tuple[StoreState, bool]:
    """The agent starts. Returns the new state and whether it rolled back for a crash loop.

    Every start while on probation counts; more than ``crash_loop_threshold`` starts before the
    commit means the new model (or the agent with it) keeps crashing: roll back.
    """
    if not state.probation:
        return state, False
    counted = replace(state, boot_count=state.boot_count + 1)
    if counted.boot_count > crash_loop_threshold:
        return fail_probation(counted), True
    return counted, False


def remember_command(state: StoreState, cmd_id: str) -> StoreState:
    """Record a handled command id (the most recent :data:`MAX_SEEN_COMMANDS`)."""
    if cmd_id in state.seen_commands:
        return state
    return replace(state, seen_commands=(*state.seen_commands, cmd_id)[-MAX_SEEN_COMMANDS:])
