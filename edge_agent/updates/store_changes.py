"""What happened to the model store outside this process's own commands, and what the updater does
about it.

- At start-up (:func:`boot_store`): finish or undo what a crash left half done
  (:meth:`edge_agent.store.ModelStore.recover`), count the boot of a model on probation and roll
  back a crash loop, report a rollback ``edge-agent rollback`` made while the daemon was stopped,
  and load the active model (falling back to the previous one if it cannot load).
- While the daemon runs (:func:`adopt_external_change`): ``edge-agent install``/``rollback`` changed
  ``state.json`` under the store's lock; serve whatever is now active.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edge_agent import store_rules
from edge_agent.manifest import MANIFEST_FILE, Manifest
from edge_agent.updates.outcome import model_ref
from edge_agent.updates.probation_monitor import local_rollback_event
from edge_agent.updates.seams import Host, Runner
from lineside_common.errors import LinesideError, ModelLoadError

if TYPE_CHECKING:
    from edge_agent.updates.updater import Updater

log = logging.getLogger(__name__)


def boot_store(u: Updater) -> tuple[Runner | None, list[tuple[str, dict[str, Any]]]]:
    """Recover the store and load the active model: (its runner or None, events to emit once attached)."""
    notes_out: list[tuple[str, dict[str, Any]]] = []
    with u.lock, u.store.locked():
        state, notes = u.store.recover()
        for note in notes:
            log.warning("store recovery: %s", note)
        new_state, crash_loop = store_rules.boot(state, crash_loop_threshold=u.settings.crash_loop_threshold)
        if crash_loop and state.active is not None:
            notes_out.append(
                (
                    "rollback",
                    {
                        "level": "error",
                        "message": f"{state.active.ref} crash-looped ({state.boot_count + 1} "
                        f"starts before commit): rolled back",
                        "model": model_ref(new_state.active),
                        "cmd_id": state.probation_cmd_id,
                        "rollout_id": state.probation_rollout_id,
                        "data": {
                            "reason": "crash_loop",
                            "failed_model": state.active.to_dict(),
                            "evidence": {
                                "boots": state.boot_count + 1,
                                "threshold": u.settings.crash_loop_threshold,
                            },
                        },
                    },
                )
            )
        local = new_state.local_change or {}
        if local.get("kind") == "rollback" and new_state.active is not None:
            # `edge-agent rollback` ran while the daemon was stopped: report it now, once.
            notes_out.append(("rollback", local_rollback_event(new_state.active, local, {})))
        if new_state.local_change is not None:
            new_state = replace(new_state, local_change=None)
        if new_state != state:
            u.store.write_state(new_state)
        state = new_state
        runner: Runner | None = None
        while state.active is not None and runner is None:
            try:
                runner = u.load_runner(u.store.bundle_dir(state.active))
            except (ModelLoadError, LinesideError) as exc:
                log.error("cannot load the active model %s: %s", state.active.ref, exc)
                if state.previous is None:
                    raise
                state = (
                    store_rules.fail_probation(state)
                    if state.probation
                    else replace(state, active=state.previous, previous=None)
                )
                u.store.write_state(state)
        if state.probation:
            u.probation.start()
        u.note_state_written()
        if crash_loop and state.active is not None:
            u.store.gc(state)
        return runner, notes_out


def adopt_external_change(u: Updater, host: Host) -> bool:
    """Swap to the model ``state.json`` now names, if another than the one serving. True if swapped.

    Called with the updater's lock held, once a changed ``state.json`` was noticed.
    """
    state = u.store.read_state()
    current = getattr(host.runner, "sha256", None)
    if state.active is None or state.active.sha256 == current:
        return False
    runner = u.load_runner(u.store.bundle_dir(state.active))
    u.shadows.stop("candidate")
    manifest = Manifest.model_validate_json((u.store.bundle_dir(state.active) / MANIFEST_FILE).read_bytes())
    reverse = u.shadowing.reverse_for(state, manifest, serving_sha256=current)
    swap = u.swap(runner, keep_old=reverse)
    if state.probation:
        u.probation.start()
    else:
        u.probation.since = None
    note = state.local_change or {}
    if note.get("kind") == "rollback" and note.get("active") == state.active.sha256:
        u.emit("rollback", **local_rollback_event(state.active, note, swap))
        with u.store.locked():  # reported: a restart must not report it again
            now_state = u.store.read_state()
            if now_state.local_change == state.local_change:
                u.store.write_state(replace(now_state, local_change=None))
            u.note_state_written()
        return True
    u.emit(
        "update.installed",
        message=f"{state.active.ref} activated from the local store (installed by the CLI)",
        model=model_ref(state.active),
        data={"source": "cli", "probation": state.probation, "reverse_shadow": u.shadowing.reverse_running},
    )
    return True
