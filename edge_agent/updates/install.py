"""The install sequence of a deploy or ``edge-agent install DIR``, after :mod:`.staging`:

commit the verified staging directory as a bundle → load and self-test it beside the serving
model → wait for the line's update window (if any) → write ``state.json`` → swap → probation, or a
commit at once when there is nothing to roll back to. See :mod:`.updater` for what a crash at
each step leaves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import store_rules
from edge_agent.store_rules import BundleRef
from edge_agent.trust import TrustedRepository
from edge_agent.updates.outcome import REFUSALS, Outcome, model_ref
from edge_agent.updates.seams import Runner
from edge_agent.updates.settings import fault
from edge_agent.updates.staging import device_facts, load_selftested, stage_verified
from lineside_common.errors import UpdateRefusedError

if TYPE_CHECKING:
    from edge_agent.updates.updater import Updater


def provider_choice(runner: Any) -> dict[str, Any]:
    """The serving provider and, when chosen by measurement, every candidate's self-test ms."""
    choice = getattr(runner, "choice", None)
    if choice is None:
        return {}
    return {"provider": choice.provider, "provider_timings_ms": dict(choice.timings_ms)}


def install_release(
    u: Updater,
    repo: Callable[[], TrustedRepository],
    name: str,
    version: str,
    *,
    cmd_id: str | None = None,
    rollout_id: str | None = None,
    force: bool = False,
) -> Outcome:
    """Install ``name@version`` from ``repo`` (see the module docstring); every step an event."""
    ctx = {"cmd_id": cmd_id, "rollout_id": rollout_id}
    u.emit(
        "update.started",
        message=f"installing {name}@{version}",
        data={"name": name, "version": version},
        **ctx,
    )
    staged: Path | None = None
    new_runner: Runner | None = None
    try:
        with u.lock:
            state = u.store.read_state()
            if state.active is not None and (state.active.name, state.active.version) == (name, version):
                u.emit(
                    "update.installed",
                    message=f"{name}@{version} is already active",
                    model=model_ref(state.active),
                    data={"already_active": True},
                    **ctx,
                )
                if not state.probation:
                    u.probation.committed_without_probation(state.active, "it was already active", ctx)
                return Outcome("already_active", f"{name}@{version} is already active", state.active)
            release = stage_verified(
                repo,
                name,
                version,
                device_facts(u.settings, state),
                store=u.store,
                settings=u.settings,
                force=force,
                sleep=u.sleep,
            )
            staged, ref, manifest = release.dir, release.ref, release.manifest
            u.emit(
                "update.verified",
                message=f"{ref.ref} verified (TUF, manifest, device class, agent version)",
                model=model_ref(ref),
                **ctx,
            )
            fault(u.settings, "after_verify")
            with u.store.locked():
                u.store.commit_staged(staged, release.files, ref)
                staged = None
                fault(u.settings, "after_rename")
            # Build, warm and self-test the new session beside the serving one.
            new_runner, max_diff = load_selftested(u.load_runner, u.store.bundle_dir(ref), manifest)
            window = _await_window(u, ref, ctx)
            with u.store.locked():
                state = u.store.read_state()
                new_state = store_rules.install(state, ref, cmd_id=cmd_id, rollout_id=rollout_id)
                u.store.write_state(new_state)
                u.note_state_written()
            fault(u.settings, "after_state_write")
            choice = provider_choice(new_runner)
            u.shadows.stop("candidate")  # a shadow of this or another candidate ends here
            reverse = u.shadowing.reverse_for(new_state, manifest)
            swap = u.swap(new_runner, keep_old=reverse)
            new_runner = None
            u.emit(
                "update.installed",
                message=f"{ref.ref} installed and serving"
                + (" (on probation)" if new_state.probation else ""),
                model=model_ref(ref),
                data={
                    "selftest_max_abs_diff": max_diff,
                    "probation": new_state.probation,
                    "swap": swap,
                    "fetch_retries": release.retries,
                    **({"window": window} if window else {}),
                    **choice,
                },
                **ctx,
            )
            if new_state.probation:
                u.probation.start()
                u.emit(
                    "probation.started",
                    message=f"{ref.ref} on probation for {manifest.probation.window_s}s",
                    model=model_ref(ref),
                    data={
                        "gates": manifest.probation.model_dump(),
                        "agreement_gates": manifest.agreement.model_dump(),
                        "reverse_shadow": u.shadowing.reverse_running,
                    },
                    **ctx,
                )
            else:
                u.store.gc(new_state)
                u.probation.committed_without_probation(
                    ref, "there is no previous model to roll back to", ctx
                )
            return Outcome("installed", f"{ref.ref} installed", ref, data={"probation": new_state.probation})
    except REFUSALS as exc:
        return u.refuse(exc, ctx, name, version)
    finally:
        if staged is not None:
            u.store.discard_staging(staged)
        if new_runner is not None:
            with contextlib.suppress(Exception):
                new_runner.close()


def _await_window(u: Updater, ref: BundleRef, ctx: dict[str, Any]) -> dict[str, Any]:
    """Wait for the line's update window (if one is configured) with the updater's lock released,
    so a rollback can run meanwhile (rollbacks are never deferred) and cancel this swap."""
    gate = u.window_gate
    if gate is None or u.host is None:
        return {}
    from edge_agent.robot_side import WindowCancelledError

    u.lock.release()
    try:
        return dict(gate.wait(ref, model_ref(ref), ctx))
    except WindowCancelledError as exc:
        raise UpdateRefusedError(
            f"swap cancelled while deferred: {exc.reason}", reason="cancelled", kind="update.failed"
        ) from exc
    finally:
        u.lock.acquire()
