"""Shadows the updater runs: a candidate beside the serving model, and the reverse shadow.

- A shadow deploy (``deploy`` with ``mode: shadow``) verifies and self-tests a release through the
  same staging pipeline as an install, then runs it in shadow from ``staging/``; nothing is
  installed. ``stop_shadow`` ends it.
- ``edge-agent install DIR --shadow`` does the same in the CLI and hands the verified files to the
  daemon (:mod:`edge_agent.shadow_sideload`), which starts or stops that shadow at its next window.
- During probation the previous model keeps running in shadow (the *reverse shadow*), so the
  probation verdict can include how far the new model agrees with the one it replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.manifest import Manifest, version_key
from edge_agent.messages import ModelRef
from edge_agent.shadow_sideload import publish_request, read_request, shadow_paths
from edge_agent.store_rules import StoreState
from edge_agent.trust import TrustedRepository
from edge_agent.updates.outcome import REFUSALS, Outcome, model_ref
from edge_agent.updates.seams import Runner
from edge_agent.updates.staging import (
    StagedRelease,
    device_facts,
    dir_repository,
    http_repository,
    load_selftested,
    pick_release,
    stage_verified,
)
from lineside_common.errors import LinesideError, UpdateRefusedError

if TYPE_CHECKING:
    from edge_agent.updates.updater import Updater


class Shadowing:
    """The updater's shadows (see the module docstring); ``updater.shadows`` runs them."""

    def __init__(self, updater: Updater) -> None:
        self._u = updater
        self.reverse_running = False  # this probation runs the previous model in shadow
        self._request_mtime = 0  # the `edge-agent install --shadow` request last acted on
        self._sideloaded = False

    # -- reverse shadow ----------------------------------------------------------------------------

    def reverse_for(
        self, state: StoreState, manifest: Manifest, *, serving_sha256: str | None = None
    ) -> Callable[[Any], None] | None:
        """How the swap keeps the previous model running in shadow during probation, or None.

        Only on probation, with a host that can shadow, and not after a downgrade (a forced or
        signed downgrade is a person's deliberate word: it stands, and the event records it).
        """
        self.end_reverse()
        shadows = self._u.shadows
        prev = state.previous
        if not state.probation or prev is None or state.active is None or not shadows.available:
            return None
        if serving_sha256 is not None and serving_sha256 != prev.sha256:
            return None  # the model serving now is not the one probation would fall back to
        try:
            if version_key(state.active.version) < version_key(prev.version):
                return None
        except ValueError:
            return None

        def keep(old: Any) -> None:
            self.reverse_running = (
                shadows.start(old, role="baseline", confident=manifest.drift.low_confidence) is not None
            )

        return keep

    def end_reverse(self) -> None:
        if self.reverse_running:
            self._u.shadows.stop("baseline")
        self.reverse_running = False

    # -- shadow deploys ----------------------------------------------------------------------------

    def _stage(self, repository: Callable[[], TrustedRepository], name: str, version: str) -> StagedRelease:
        u = self._u
        facts = device_facts(u.settings, u.store.read_state())
        return stage_verified(
            repository, name, version, facts, store=u.store, settings=u.settings, sleep=u.sleep
        )

    def deploy(
        self,
        name: str,
        version: str,
        *,
        cmd_id: str | None = None,
        rollout_id: str | None = None,
        repo: Callable[[], TrustedRepository] | None = None,
    ) -> Outcome:
        """A ``deploy`` in shadow mode: verify and stage ``name@version`` like an install, then run it
        in shadow beside the serving model. Nothing is installed; the store's state is unchanged."""
        u = self._u
        if not u.begin(cmd_id):
            return Outcome("duplicate", f"command {cmd_id} was already handled")
        ctx = {"cmd_id": cmd_id, "rollout_id": rollout_id}
        staged: Path | None = None
        runner: Runner | None = None
        try:
            if not u.shadows.available:
                raise UpdateRefusedError("this agent has no inference loop to shadow", reason="no_shadow")
            release = self._stage(
                repo or (lambda: http_repository(u.store, u.settings, u.now)), name, version
            )
            staged = release.dir
            runner, _ = load_selftested(u.load_runner, staged, release.manifest)
            dir_ = staged
            u.shadows.start(
                runner,
                role="candidate",
                confident=release.manifest.drift.low_confidence,
                on_close=lambda: u.store.discard_staging(dir_),
            )
            staged = runner = None
            u.emit(
                "shadow.started",
                message=f"{release.ref.ref} verified and running in shadow (never acting)",
                model=model_ref(release.ref),
                data={"every_n": u.shadows.every_n, "max_cpu_share": u.shadows.max_cpu_share},
                **ctx,
            )
            return Outcome(
                "verified", f"{release.ref.ref} runs in shadow", release.ref, data={"mode": "shadow"}
            )
        except REFUSALS as exc:
            return u.refuse(exc, ctx, name, version)
        finally:
            if runner is not None:
                with contextlib.suppress(Exception):
                    runner.close()
            if staged is not None:
                u.store.discard_staging(staged)
            u.end(cmd_id)

    def stop(self, *, cmd_id: str | None = None, rollout_id: str | None = None) -> Outcome:
        """The ``stop_shadow`` command: end a shadow deploy (its staged files are deleted)."""
        stopped = self._u.shadows.stop("candidate")
        ref = stopped.candidate_ref if stopped is not None else None
        self._u.emit(
            "shadow.stopped",
            message=f"{ref.name}@{ref.version} no longer runs in shadow" if ref else "no shadow was running",
            model=ref,
            data={"was_running": stopped is not None},
            cmd_id=cmd_id,
            rollout_id=rollout_id,
        )
        return Outcome("verified", "shadow stopped")

    # -- the side-loaded shadow (edge-agent install DIR --shadow) ------------------------------------

    def install_from_dir(
        self, repo_dir: Path, *, name: str | None = None, version: str | None = None
    ) -> Outcome:
        """``edge-agent install DIR --shadow``: verify like an install, hand the candidate to the
        daemon to run in shadow (:mod:`edge_agent.shadow_sideload`). Nothing is installed."""
        u = self._u
        repo_dir = Path(repo_dir)
        ctx: dict[str, Any] = {"cmd_id": None, "rollout_id": None}
        name = name or ""
        version = version or ""
        staged: Path | None = None
        try:
            if not name or not version:
                name, version = pick_release(repo_dir)
            release = self._stage(lambda: dir_repository(u.store, u.settings, u.now, repo_dir), name, version)
            staged = release.dir
            runner, _ = load_selftested(u.load_runner, staged, release.manifest)
            runner.close()
            with u.store.locked():
                publish_request(u.store.root, staged, name, version, release.files)
            staged = None
            return Outcome(
                "verified",
                f"{release.ref.ref} verified; the running agent runs it in shadow from its next telemetry window",
                release.ref,
                data={"mode": "shadow"},
            )
        except REFUSALS as exc:
            return u.refuse(exc, ctx, name, version)
        finally:
            if staged is not None:
                u.store.discard_staging(staged)

    def check_request(self) -> bool:
        """Daemon side of ``install --shadow``: start or stop the side-loaded shadow. True if changed."""
        u = self._u
        if not u.shadows.available:
            return False
        _, cand, req = shadow_paths(u.store.root)
        try:
            mtime = req.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        if mtime == self._request_mtime:
            return False
        self._request_mtime = mtime
        if mtime == 0:
            if self._sideloaded:
                stopped = u.shadows.stop("candidate")
                self._sideloaded = False
                ref = stopped.candidate_ref if stopped is not None else None
                u.emit(
                    "shadow.stopped",
                    message="the side-loaded shadow was withdrawn (edge-agent install --shadow-stop)",
                    model=ref,
                    data={"source": "cli", "was_running": stopped is not None},
                )
            return True
        try:
            request = read_request(u.store.root)
            if request is None:
                return False
            runner = u.load_runner(cand)
        except (ValueError, KeyError, OSError, LinesideError) as exc:
            u.emit(
                "update.rejected",
                level="error",
                message=f"side-loaded shadow refused: {exc}",
                data={"reason": "shadow_files", "source": "cli"},
            )
            return False
        u.shadows.start(runner, role="candidate", confident=runner.manifest.drift.low_confidence)
        self._sideloaded = True
        u.emit(
            "shadow.started",
            message=f"{request['name']}@{request['version']} runs in shadow (side-loaded, never acting)",
            model=ModelRef(name=request["name"], version=request["version"], sha256=request["sha256"]),
            data={"source": "cli", "every_n": u.shadows.every_n},
        )
        return True
