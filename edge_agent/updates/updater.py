"""The orchestration of a model update: verify → stage → self-test → swap → probation → commit | rollback.

The I/O shell around the pure parts: :mod:`edge_agent.trust` (TUF), :mod:`edge_agent.acceptance`
(may this device take it), :mod:`edge_agent.store_rules` (what the state becomes),
:mod:`edge_agent.probation` (is the new model healthy) and :mod:`edge_agent.selftest`; and around
this package's concerns: :mod:`.staging` (the one download-and-verify pipeline), :mod:`.install`,
:mod:`.swap`, :mod:`.probation_monitor`, :mod:`.shadowing`, :mod:`.store_changes`. The
:class:`Updater` holds what they share (store, settings, lock, events) and takes the commands.
Every step is an event carrying the command's ``cmd_id``.

Steps of an install and what a crash (power loss, SIGKILL) at each leaves::

    refresh TUF metadata      nothing changed but the trusted metadata (itself atomic, fsynced)
    download into staging/    staging/ is deleted at the next start              (mid_stage, after_download)
    manifest + device checks  same                                               (after_verify)
    rename into bundles/      unreferenced bundle, deleted at the next start     (after_rename)
    load + self-test          same
    write state.json          new model active, on probation (boot counter)      (after_state_write)
    swap between two frames   (in memory only)
    probation                 a restart counts a boot; too many → rollback       (during_probation)
    commit / rollback         state.json again, then GC of unreferenced bundles

So after any restart exactly the old or the new model is active and it verifies (ModelStore.recover).

``fault_point`` kills this process with SIGKILL at the named step. It exists only for the
crash-safety tests; never set it in production.

The CLI (``edge-agent install``/``rollback``) may change the store while the daemon runs: both hold
the store's file lock while they change it, and the daemon notices a changed ``state.json`` once per
telemetry window (:meth:`Updater.check_external_change`) and swaps to whatever is now active.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent import store_rules
from edge_agent.messages import ModelRef, Telemetry
from edge_agent.shadow_control import ShadowControl
from edge_agent.store import ModelStore
from edge_agent.updates.install import install_release
from edge_agent.updates.outcome import Outcome, model_ref, refusal
from edge_agent.updates.probation_monitor import ProbationMonitor
from edge_agent.updates.seams import Host, Runner
from edge_agent.updates.settings import UpdaterSettings
from edge_agent.updates.shadowing import Shadowing
from edge_agent.updates.staging import (
    dir_repository,
    http_repository,
    pick_release,
    verify_release,
)
from edge_agent.updates.store_changes import adopt_external_change, boot_store
from edge_agent.updates.swap import DecisionMeter, swap_in
from lineside_common.errors import LinesideError, UpdateRefusedError

log = logging.getLogger(__name__)


class Updater:
    """Installs, verifies, swaps, judges and rolls back models for one device.

    ``host`` is the running Agent (None for the CLI and tests without an inference loop: then
    nothing is swapped, the state alone changes, and a running daemon picks it up).
    ``load_runner(bundle_dir)`` builds and warms a runner (ModelRunner.load with the config).
    ``emit(kind, **kw)`` reports events; default: the host's ``emit_event``, else the log.
    """

    def __init__(
        self,
        store: ModelStore,
        settings: UpdaterSettings,
        *,
        load_runner: Callable[[Path], Runner],
        host: Host | None = None,
        emit: Callable[..., Any] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.settings = settings
        self.load_runner = load_runner
        self.host = host
        self._emit = emit
        self.now = now
        self.lock = threading.RLock()
        self._in_flight: set[str] = set()
        self._state_mtime = 0
        self._boot_notes: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []  # what was emitted (CLI output, tests)
        self.meter: DecisionMeter | None = None  # set when attached to an agent
        self.sleep: Callable[[float], object] = time.sleep  # backoff between fetch retries (a test seam)
        # The update window (edge_agent/robot_side.WindowGate): a staged model waits for the line.
        self.window_gate: Any = None
        self.shadows = ShadowControl()
        self.probation = ProbationMonitor(self)
        self.shadowing = Shadowing(self)
        # The shadow commands: a shadow deploy, stop_shadow, `edge-agent install DIR --shadow`, and
        # the daemon's side of the latter (see .shadowing).
        self.deploy_shadow = self.shadowing.deploy
        self.stop_shadow = self.shadowing.stop
        self.install_shadow_from_dir = self.shadowing.install_from_dir
        self.check_shadow_request = self.shadowing.check_request

    # -- events, state, swap (used by the parts) ---------------------------------------------------

    def emit(self, kind: str, **kw: Any) -> None:
        """Report an event (recorded in :attr:`events` too); ``level`` defaults to ``info``."""
        kw.setdefault("level", "info")
        self.events.append((kind, kw))
        if self._emit is not None:
            self._emit(kind, **kw)
        elif self.host is not None:
            self.host.emit_event(kind, **kw)
        else:
            log.info("%s: %s", kind, kw.get("message", ""))

    def note_state_written(self) -> None:
        """This process wrote state.json: not an external change to react to."""
        self._state_mtime = self.store.state_mtime_ns()

    def swap(self, runner: Runner, keep_old: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Swap ``runner`` in (:func:`.swap.swap_in`); what the swap did to the line."""
        return swap_in(
            self.host, runner, timeout_s=self.settings.swap_timeout_s, meter=self.meter, keep_old=keep_old
        )

    def model_info(self) -> tuple[ModelRef | None, ModelRef | None, bool]:
        """(active, previous, on probation) for the agent's state message."""
        state = self.store.read_state()
        return model_ref(state.active), model_ref(state.previous), state.probation

    # -- start-up ----------------------------------------------------------------------------------

    def boot(self) -> Runner | None:
        """At agent start: recover the store, count the boot, roll back a crash loop, load the active model.

        Returns the runner of the active verified bundle (None when nothing is installed).
        Events found at start-up are emitted once a host is attached (:meth:`attach`).
        """
        runner, notes = boot_store(self)
        self._boot_notes.extend(notes)
        return runner

    def attach(self, host: Host) -> None:
        """Connect to the running agent: emit what boot found, watch its telemetry windows."""
        self.host = host
        self.shadows.host = host
        for kind, kw in self._boot_notes:
            self.emit(kind, **kw)
        self._boot_notes.clear()
        state = self.store.read_state()
        if state.probation and state.active is not None:
            self.emit(
                "probation.started",
                message=f"{state.active.ref} on probation (boot {state.boot_count})",
                model=model_ref(state.active),
                cmd_id=state.probation_cmd_id,
                rollout_id=state.probation_rollout_id,
            )

    # -- commands ----------------------------------------------------------------------------------

    def begin(self, cmd_id: str | None) -> bool:
        """False when ``cmd_id`` was handled already or is in flight (duplicate delivery)."""
        if cmd_id is None:
            return True
        with self.lock:
            if cmd_id in self._in_flight or cmd_id in self.store.read_state().seen_commands:
                return False
            self._in_flight.add(cmd_id)
            return True

    def end(self, cmd_id: str | None) -> None:
        """``cmd_id`` is handled: remember it (durably) so a redelivery is a duplicate."""
        if cmd_id is None:
            return
        with self.lock, self.store.locked():
            self._in_flight.discard(cmd_id)
            state = self.store.read_state()
            new = store_rules.remember_command(state, cmd_id)
            if new != state:
                self.store.write_state(new)

    def refuse(self, exc: BaseException, ctx: dict[str, Any], name: str, version: str) -> Outcome:
        """Report an update stopped by ``exc`` (one of :data:`~.outcome.REFUSALS`) and drop its leftovers."""
        kind, reason, data = refusal(exc)
        # Nothing was installed: drop any bundle this attempt added that the state does not name.
        with contextlib.suppress(LinesideError, OSError):
            self.store.gc()
        self.emit(
            kind,
            level="error" if kind == "update.failed" else "warning",
            message=f"{name}@{version}: {exc}",
            data={"reason": reason, "name": name, "version": version, **data},
            **ctx,
        )
        return Outcome("rejected" if kind == "update.rejected" else "failed", str(exc), reason=reason)

    def deploy(
        self, name: str, version: str, *, cmd_id: str | None = None, rollout_id: str | None = None
    ) -> Outcome:
        """The ``deploy`` command: fetch ``name@version`` through TUF from the fleet server and install it."""
        if not self.begin(cmd_id):
            log.info("duplicate command %s ignored", cmd_id)
            return Outcome("duplicate", f"command {cmd_id} was already handled")
        try:
            repo = lambda: http_repository(self.store, self.settings, self.now)  # noqa: E731
            return install_release(self, repo, name, version, cmd_id=cmd_id, rollout_id=rollout_id)
        finally:
            self.end(cmd_id)

    def install_from_dir(
        self,
        repo_dir: Path,
        *,
        name: str | None = None,
        version: str | None = None,
        cmd_id: str | None = None,
        force: bool = False,
    ) -> Outcome:
        """``edge-agent install DIR``: the same TUF workflow over a local repository directory."""
        repo_dir = Path(repo_dir)
        if name is None or version is None:
            try:
                name, version = pick_release(repo_dir)
            except UpdateRefusedError as exc:
                return Outcome("rejected", str(exc), reason=exc.reason)
        repo = lambda: dir_repository(self.store, self.settings, self.now, repo_dir)  # noqa: E731
        return install_release(self, repo, name, version, cmd_id=cmd_id, force=force)

    def rollback(
        self,
        *,
        cmd_id: str | None = None,
        rollout_id: str | None = None,
        reason: str = "",
        code: str = "requested",
    ) -> Outcome:
        """The ``rollback`` command (``code`` ``requested``) / ``edge-agent rollback`` (``operator``).

        ``reason`` is the human message; ``code`` the typed reason in the ``rollback`` event.
        """
        if not self.begin(cmd_id):
            return Outcome("duplicate", f"command {cmd_id} was already handled")
        try:
            gate = self.window_gate
            if gate is not None and gate.waiting:
                # The new model never served: undoing it means dropping the deferred swap, not
                # stepping back past the model that serves now.
                gate.cancel("rollback")
                self.emit(
                    "rollback",
                    message="rollback: the deferred swap is cancelled; the serving model is unchanged",
                    model=model_ref(self.store.read_state().active),
                    data={"reason": "deferred_cancelled", "requested": reason},
                    cmd_id=cmd_id,
                    rollout_id=rollout_id,
                )
                return Outcome("cancelled", "the deferred swap was cancelled")
            return self.probation.rollback(
                cmd_id=cmd_id, rollout_id=rollout_id, reason=code, message=reason or "rollback requested"
            )
        finally:
            self.end(cmd_id)

    # -- telemetry windows -------------------------------------------------------------------------

    def on_window(self, telemetry: Telemetry) -> None:
        """Agent window listener: judge probation, notice external store changes."""
        try:
            self.check_external_change()
            self.check_shadow_request()
            self.probation.judge(telemetry)
        except Exception:  # a listener must never kill the telemetry thread
            log.exception("updater window handling failed")

    def check_external_change(self) -> bool:
        """If the CLI changed ``state.json`` while we run, serve what it made active. True if swapped."""
        if self.host is None:
            return False
        mtime = self.store.state_mtime_ns()
        if mtime == self._state_mtime:
            return False
        gate = self.window_gate
        if gate is not None and gate.waiting:
            # The local operator changed the store (edge-agent install/rollback): their choice
            # wins over a swap still waiting for the line.
            gate.cancel("the local store was changed by edge-agent")
        with self.lock:
            self._state_mtime = mtime
            return adopt_external_change(self, self.host)

    # -- verify only -------------------------------------------------------------------------------

    def verify_dir(self, repo_dir: Path, *, name: str | None = None, version: str | None = None) -> Outcome:
        """``edge-agent verify DIR``: the whole check (TUF, manifest, device, self-test), nothing installed."""
        return verify_release(
            self.store,
            self.settings,
            self.now,
            self.load_runner,
            Path(repo_dir),
            name=name,
            version=version,
            sleep=self.sleep,
        )
