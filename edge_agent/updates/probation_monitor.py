"""Probation: a new model serves, on probation, until its telemetry windows pass its gates (commit)
or fail them (rollback to the previous model).

:func:`with_agreement` (pure) adds the reverse shadow's agreement verdicts to the health verdict of
:func:`edge_agent.probation.judge`. :class:`ProbationMonitor` collects the windows since the swap,
judges each one, and carries out the commit or the rollback (state.json under the store's lock,
the swap back, the events). A rollback asked for by a command or ``edge-agent rollback`` runs the
same :meth:`ProbationMonitor.rollback`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edge_agent import store_rules
from edge_agent.manifest import MANIFEST_FILE, Manifest
from edge_agent.messages import Telemetry
from edge_agent.probation import ProbationResult, judge, relevant_windows
from edge_agent.shadow_control import probation_agreement
from edge_agent.store_rules import BundleRef
from edge_agent.updates.outcome import Outcome, model_ref
from edge_agent.updates.settings import fault
from edge_agent.verdicts import combine
from lineside_common.errors import LinesideError

if TYPE_CHECKING:
    from edge_agent.updates.updater import Updater

log = logging.getLogger(__name__)


def with_agreement(
    result: ProbationResult,
    windows: list[Telemetry],
    manifest: Manifest,
    active_sha256: str,
    *,
    reverse_shadow: bool,
) -> ProbationResult:
    """Add the reverse shadow's agreement verdicts to the health verdict ``result``.

    Both are judged at the end of the probation window (a broken irreversible health gate
    still fails at once): a disagreement proven at the manifest's confidence fails probation,
    a pass needs both, and an undecided agreement keeps probation running. Without a reverse
    shadow a pass records that agreement was not measured.
    """
    if not reverse_shadow:
        if result.verdict == "pass":
            return replace(result, evidence={**result.evidence, "agreement": "not_measured"})
        return result
    judged = probation_agreement(windows, manifest, active_sha256)
    if judged is None:
        return result if result.verdict == "fail" else replace(result, verdict="undecided")
    if result.verdict == "undecided":
        return result
    verdicts, merged = judged
    evidence = {
        **result.evidence,
        "agreement": {
            "verdicts": [v.to_dict() for v in verdicts],
            "frames": merged["frames"],
            "compared": merged["compared"],
            "agree": merged["agree"],
            "candidate_only": merged["candidate_only"],
            "intended": merged["intended"],
            "confusion": merged["confusion"],
        },
    }
    overall = combine(verdicts)
    failed = tuple(v.metric for v in verdicts if v.value == "fail")
    if overall == "fail":
        return ProbationResult("fail", (*result.failed_gates, *failed), evidence)
    if result.verdict == "fail":
        return replace(result, evidence=evidence)
    if result.verdict == "pass" and overall == "pass":
        return replace(result, evidence=evidence)
    return ProbationResult("undecided", (), evidence)


def local_rollback_event(active: BundleRef, note: Mapping[str, Any], swap: dict[str, Any]) -> dict[str, Any]:
    """The ``rollback`` event for a rollback made by ``edge-agent rollback`` (reason ``operator``)."""
    return {
        "level": "info",
        "message": f"rolled back to {active.ref} by a local operator (edge-agent rollback)",
        "model": model_ref(active),
        "data": {
            "reason": str(note.get("reason") or "operator"),
            "failed_model": note.get("from"),
            "evidence": {},
            "swap": swap,
            "source": "cli",
        },
    }


class ProbationMonitor:
    """The probation of the model now serving: its windows, the verdict, commit or rollback.

    Part of an :class:`~edge_agent.updates.updater.Updater`, whose store, lock, events and swap
    it uses; ``since`` is None while nothing is on probation in this process.
    """

    def __init__(self, updater: Updater) -> None:
        self._u = updater
        self.since: datetime | None = None
        self.windows: list[Telemetry] = []

    def start(self) -> None:
        self.since = self._u.now()
        self.windows = []

    def clear(self) -> None:
        self.since = None
        self.windows = []

    def judge(self, telemetry: Telemetry) -> ProbationResult | None:
        """Judge probation with one more window: commit on pass, roll back on fail."""
        u = self._u
        with u.lock:
            since = self.since
            if since is None:
                return None
            state = u.store.read_state()
            if not state.probation or state.active is None:
                self.since = None
                return None
            fault(u.settings, "during_probation")
            self.windows.append(telemetry)
            windows = relevant_windows(self.windows, since=since, model_sha256=state.active.sha256)
            manifest = Manifest.model_validate_json(
                (u.store.bundle_dir(state.active) / MANIFEST_FILE).read_bytes()
            )
            result = with_agreement(
                judge(manifest.probation, windows),
                windows,
                manifest,
                state.active.sha256,
                reverse_shadow=u.shadowing.reverse_running,
            )
            if result.verdict == "pass":
                with u.store.locked():
                    state = u.store.read_state()
                    if not state.probation or state.active is None:
                        return result
                    new_state = store_rules.commit(state)
                    u.store.write_state(new_state)
                    u.note_state_written()
                self.clear()
                u.shadowing.end_reverse()
                u.emit(
                    "probation.passed",
                    message=f"{state.active.ref} passed probation: committed",
                    model=model_ref(state.active),
                    data={"evidence": result.evidence},
                    cmd_id=state.probation_cmd_id,
                    rollout_id=state.probation_rollout_id,
                )
                u.store.gc(new_state)
            elif result.verdict == "fail":
                self.rollback(
                    cmd_id=None,
                    rollout_id=None,
                    reason="probation_failed",
                    message=result.reason,
                    evidence={**result.evidence, "failed_gates": list(result.failed_gates)},
                    failed_probation=True,
                )
            return result

    def committed_without_probation(self, ref: Any, why: str, ctx: dict[str, Any]) -> None:
        """Tell a rollout that waits for a probation verdict that this device is settled on ``ref``.

        A first install (nothing to roll back to) and a deploy of the version already serving are
        committed at once; without this the fleet would wait for a verdict that never comes.
        """
        self._u.emit(
            "probation.passed",
            message=f"{ref.ref} committed without probation: {why}",
            model=model_ref(ref),
            data={"probation": "skipped", "why": why},
            **ctx,
        )

    def rollback(
        self,
        *,
        cmd_id: str | None,
        rollout_id: str | None,
        reason: str,
        message: str,
        evidence: dict[str, Any] | None = None,
        failed_probation: bool = False,
    ) -> Outcome:
        """Make the previous model active again (verified first) and swap it in."""
        u = self._u
        ctx = {"cmd_id": cmd_id, "rollout_id": rollout_id}
        gate = u.window_gate
        if gate is not None and gate.waiting:
            gate.cancel("rollback")  # an automatic rollback changes what the waiting swap replaces
        with u.lock:
            with u.store.locked():
                state = u.store.read_state()
                if state.previous is None or state.active is None:
                    u.emit(
                        "update.rejected",
                        level="warning",
                        message="nothing to roll back to",
                        data={"reason": "no_previous"},
                        **ctx,
                    )
                    return Outcome(
                        "rejected", "there is no previous model to roll back to", reason="no_previous"
                    )
                failed = state.active
                target = state.previous
                try:
                    u.store.verify_bundle(target)
                    runner = u.load_runner(u.store.bundle_dir(target)) if u.host is not None else None
                except LinesideError as exc:
                    u.emit(
                        "update.failed",
                        level="error",
                        message=f"cannot roll back: {exc}",
                        data={"reason": "store"},
                        **ctx,
                    )
                    return Outcome("failed", str(exc), reason="store")
                new_state = (
                    store_rules.fail_probation(state) if failed_probation else store_rules.rollback(state)
                )
                if u.host is None:
                    # Made by the CLI: the daemon (running now, or at its next start) reports it
                    # as a rollback, not as an install.
                    new_state = replace(
                        new_state,
                        local_change={
                            "kind": "rollback",
                            "reason": reason,
                            "active": target.sha256,
                            "from": failed.to_dict(),
                        },
                    )
                u.store.write_state(new_state)
                u.note_state_written()
            self.clear()
            u.shadowing.end_reverse()
            swap = u.swap(runner) if runner is not None else {}
            u.emit(
                "rollback",
                level="warning" if reason != "requested" else "info",
                message=f"rolled back from {failed.ref} to {target.ref}: {message}",
                model=model_ref(target),
                data={
                    "reason": reason,
                    "failed_model": failed.to_dict(),
                    "evidence": evidence or {},
                    "swap": swap,
                },
                cmd_id=cmd_id or state.probation_cmd_id,
                rollout_id=rollout_id or state.probation_rollout_id,
            )
            if not new_state.probation:
                u.store.gc(new_state)
            return Outcome(
                "rolled_back", f"now serving {target.ref}", target, reason=reason, data=evidence or {}
            )
