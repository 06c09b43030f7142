"""Model updates on the device: verify → stage → self-test → swap → probation → commit | rollback.

The orchestration (I/O shell) around the pure parts: :mod:`edge_agent.trust` (TUF),
:mod:`edge_agent.acceptance` (may this device take it), :mod:`edge_agent.store_rules` (what the
state becomes), :mod:`edge_agent.probation` (is the new model healthy) and
:mod:`edge_agent.selftest`. Every step is an event carrying the command's ``cmd_id``.

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

Size: over the style guide's limit, and a known debt (issue 14): it holds the staging pipeline,
probation, the swap, the shadow hooks, update windows and the wiring to the agent. Splitting it
into an ``edge_agent/updates/`` package, with one ``stage_verified`` used by deploy, install,
verify and the shadow side-load (today near-copies), is the next restructuring step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_agent import __version__, store_rules
from edge_agent.acceptance import DeviceFacts, check_release
from edge_agent.manifest import MANIFEST_FILE, Manifest, parse_manifest, version_key
from edge_agent.messages import ModelRef, Telemetry
from edge_agent.probation import ProbationResult, judge, relevant_windows
from edge_agent.selftest import run_selftest
from edge_agent.shadow_control import ShadowControl, probation_agreement
from edge_agent.shadow_sideload import publish_request, read_request, shadow_paths
from edge_agent.store import ModelStore
from edge_agent.store_rules import BundleRef, StoreState
from edge_agent.trust import (
    FetchLimits,
    TrustedRepository,
    UpdateVerificationError,
    VerifiedRelease,
    read_token_file,
)
from edge_agent.verdicts import combine
from lineside_common.errors import (
    FetchError,
    IncompatibleModelError,
    LinesideError,
    ManifestError,
    ModelLoadError,
    SelftestError,
    StoreError,
    VerificationError,
)

log = logging.getLogger(__name__)

FAULT_POINTS = (
    "after_download",
    "mid_stage",
    "after_verify",
    "after_rename",
    "after_state_write",
    "during_probation",
)


class Runner(Protocol):
    """What the updater needs of a loaded model (edge_agent.runtime.ModelRunner)."""

    manifest: Manifest
    bundle_dir: Path
    sha256: str
    output_names: list[str]

    def run_tensor(self, x: np.ndarray) -> list[np.ndarray]: ...

    def model_ref(self) -> ModelRef: ...

    def close(self) -> None: ...


class Host(Protocol):
    """What the updater needs of the running agent (edge_agent.agent.Agent)."""

    @property
    def runner(self) -> Any: ...

    def swap_runner(self, runner: Any, *, timeout_s: float = 10.0) -> Any: ...

    def emit_event(self, kind: Any, **kw: Any) -> Any: ...


@dataclass(frozen=True)
class UpdaterSettings:
    """Everything the updater needs from the config (see ``[updates]`` in the agent config)."""

    device_class: str = "generic"
    agent_version: str = __version__
    root_json: Path | None = None
    repository_url: str | None = None
    token_file: Path | None = None  # this device's HTTP token, read at each update (rotation)
    limits: FetchLimits = field(default_factory=FetchLimits)
    crash_loop_threshold: int = 3
    reserve_bytes: int = 0
    swap_timeout_s: float = 10.0
    fault_point: str | None = None  # fault-injection tests only
    # A download cut by the network (FetchError) is retried from a fresh TUF session, after
    # fetch_backoff_s, doubling up to fetch_backoff_max_s; verification failures never are.
    fetch_attempts: int = 4
    fetch_backoff_s: float = 1.0
    fetch_backoff_max_s: float = 30.0
    # The largest release (sum of its signed file lengths) this device accepts, checked before
    # any target is downloaded: a signed but absurd bundle must not fill the disk or the RAM.
    max_bundle_bytes: int = 512 * 1024 * 1024


@dataclass
class Outcome:
    """What an update command ended in (also returned to the CLI)."""

    status: str  # installed | already_active | rejected | failed | duplicate | rolled_back | verified
    message: str = ""
    model: BundleRef | None = None
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("installed", "already_active", "duplicate", "rolled_back", "verified")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "model": self.model.to_dict() if self.model else None,
            "reason": self.reason,
            "data": self.data,
        }


class _Rejected(Exception):
    def __init__(self, kind: str, reason: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "update.rejected" or "update.failed"
        self.reason = reason
        self.data = data or {}


def _ref_msg(b: BundleRef | None) -> ModelRef | None:
    return ModelRef(name=b.name, version=b.version, sha256=b.sha256) if b else None


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, UpdateVerificationError):
        return exc.reason
    if isinstance(exc, IncompatibleModelError):
        return exc.reason
    if isinstance(exc, ManifestError):
        return exc.reason
    if isinstance(exc, SelftestError):
        return "selftest"
    if isinstance(exc, VerificationError):
        return "verification"
    if isinstance(exc, FetchError):
        return "fetch"
    if isinstance(exc, StoreError):
        return "disk_full" if "disk full" in str(exc) else "store"
    if isinstance(exc, ModelLoadError):
        return "load"
    return "error"


class DecisionMeter:
    """Records (frame id, time) of recent decisions so a swap can report its effect on the line.

    Installed as (or chained to) the Agent's ``on_decision`` hook; one deque append per frame.
    """

    def __init__(self, maxlen: int = 8192, clock: Callable[[], float] = time.perf_counter) -> None:
        self._d: deque[tuple[int, float]] = deque(maxlen=maxlen)
        self.clock = clock

    def __call__(self, decision: Any) -> None:
        self._d.append((int(decision.frame_id), self.clock()))

    def snapshot(self) -> list[tuple[int, float]]:
        return list(self._d)

    def count_after(self, t: float) -> int:
        return sum(1 for _, ts in list(self._d) if ts > t)

    def swap_stats(self, t_start: float, t_end: float, *, after_frames: int = 10) -> dict[str, Any]:
        """Frames dropped and the largest gap between two decisions around a swap in [t_start, t_end].

        The span runs from the last decision before ``t_start`` to the ``after_frames``-th after
        ``t_end``; the median frame time is taken from the decisions before the swap.
        """
        d = self.snapshot()
        before = [x for x in d if x[1] <= t_start]
        after = [x for x in d if x[1] > t_start]
        span = before[-1:] + after[: after_frames + sum(1 for x in after if x[1] <= t_end)]
        intervals = [b[1] - a[1] for a, b in zip(before[-201:], before[-200:], strict=False)]
        gaps = [b[1] - a[1] for a, b in pairwise(span)]
        ids = [x[0] for x in span]
        dropped = sum(max(0, b - a - 1) for a, b in pairwise(ids))
        return {
            "dropped": dropped,
            "max_gap_ms": round(max(gaps, default=0.0) * 1000, 3),
            "median_frame_ms": round(statistics.median(intervals) * 1000, 3) if intervals else 0.0,
            "frames_observed": len(span),
        }


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
        self._lock = threading.RLock()
        self._in_flight: set[str] = set()
        self._probation_since: datetime | None = None
        self._windows: list[Telemetry] = []
        self._state_mtime = 0
        self._boot_notes: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []  # what was emitted (CLI output, tests)
        self.meter: DecisionMeter | None = None  # set when attached to an agent
        self.sleep: Callable[[float], None] = time.sleep  # backoff between fetch retries (a test seam)
        # The update window (edge_agent/robot_side.WindowGate): a staged model waits for the line.
        self.window_gate: Any = None
        self.shadows = ShadowControl()
        self._reverse_shadow = False  # this probation runs the previous model in shadow
        self._shadow_request_mtime = 0  # the `edge-agent install --shadow` request last acted on
        self._sideload_shadow = False

    # -- events ------------------------------------------------------------------------------------

    def emit(self, kind: str, **kw: Any) -> None:
        kw.setdefault("level", "info")
        self.events.append((kind, kw))
        if self._emit is not None:
            self._emit(kind, **kw)
        elif self.host is not None:
            self.host.emit_event(kind, **kw)
        else:
            log.info("%s: %s", kind, kw.get("message", ""))

    def _fault(self, point: str) -> None:
        if self.settings.fault_point == point:
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    # -- model info for the state message ----------------------------------------------------------

    def model_info(self) -> tuple[ModelRef | None, ModelRef | None, bool]:
        state = self.store.read_state()
        return _ref_msg(state.active), _ref_msg(state.previous), state.probation

    # -- start-up ----------------------------------------------------------------------------------

    def boot(self) -> Runner | None:
        """At agent start: recover the store, count the boot, roll back a crash loop, load the active model.

        Returns the runner of the active verified bundle (None when nothing is installed).
        Events found at start-up are emitted once a host is attached (:meth:`attach`).
        """
        with self._lock, self.store.locked():
            state, notes = self.store.recover()
            for note in notes:
                log.warning("store recovery: %s", note)
            new_state, crash_loop = store_rules.boot(
                state, crash_loop_threshold=self.settings.crash_loop_threshold
            )
            if crash_loop and state.active is not None:
                self._boot_notes.append(
                    (
                        "rollback",
                        {
                            "level": "error",
                            "message": f"{state.active.ref} crash-looped ({state.boot_count + 1} "
                            f"starts before commit): rolled back",
                            "model": _ref_msg(new_state.active),
                            "cmd_id": state.probation_cmd_id,
                            "rollout_id": state.probation_rollout_id,
                            "data": {
                                "reason": "crash_loop",
                                "failed_model": state.active.to_dict(),
                                "evidence": {
                                    "boots": state.boot_count + 1,
                                    "threshold": self.settings.crash_loop_threshold,
                                },
                            },
                        },
                    )
                )
            local = new_state.local_change or {}
            if local.get("kind") == "rollback" and new_state.active is not None:
                # `edge-agent rollback` ran while the daemon was stopped: report it now, once.
                self._boot_notes.append(("rollback", self._local_rollback_event(new_state.active, local, {})))
            if new_state.local_change is not None:
                new_state = replace(new_state, local_change=None)
            if new_state != state:
                self.store.write_state(new_state)
            state = new_state
            runner: Runner | None = None
            while state.active is not None and runner is None:
                try:
                    runner = self.load_runner(self.store.bundle_dir(state.active))
                except (ModelLoadError, LinesideError) as exc:
                    log.error("cannot load the active model %s: %s", state.active.ref, exc)
                    if state.previous is None:
                        raise
                    state = (
                        store_rules.fail_probation(state)
                        if state.probation
                        else replace(state, active=state.previous, previous=None)
                    )
                    self.store.write_state(state)
            if state.probation:
                self._start_probation()
            self._state_mtime = self.store.state_mtime_ns()
            if crash_loop and state.active is not None:
                self.store.gc(state)
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
                model=_ref_msg(state.active),
                cmd_id=state.probation_cmd_id,
                rollout_id=state.probation_rollout_id,
            )

    # -- commands ----------------------------------------------------------------------------------

    def _begin(self, cmd_id: str | None) -> bool:
        """False when ``cmd_id`` was handled already or is in flight (duplicate delivery)."""
        if cmd_id is None:
            return True
        with self._lock:
            if cmd_id in self._in_flight or cmd_id in self.store.read_state().seen_commands:
                return False
            self._in_flight.add(cmd_id)
            return True

    def _end(self, cmd_id: str | None) -> None:
        if cmd_id is None:
            return
        with self._lock, self.store.locked():
            self._in_flight.discard(cmd_id)
            state = self.store.read_state()
            new = store_rules.remember_command(state, cmd_id)
            if new != state:
                self.store.write_state(new)

    def _http_repository(self) -> TrustedRepository:
        if not self.settings.repository_url or self.settings.root_json is None:
            raise _Rejected(
                "update.rejected", "not_configured", "no [updates] repository_url/root_json configured"
            )
        token = None
        if self.settings.token_file is not None:
            try:
                token = read_token_file(self.settings.token_file)
            except FetchError as exc:  # a local misconfiguration: retrying cannot help
                raise _Rejected("update.rejected", "not_configured", str(exc)) from exc
        return TrustedRepository.over_http(
            self.store.tuf_dir,
            self.settings.root_json,
            self.settings.repository_url,
            token=token,
            limits=self.settings.limits,
            now=self.now,
        )

    def _dir_repository(self, repo_dir: Path, metadata_dir: Path | None = None) -> TrustedRepository:
        if self.settings.root_json is None:
            raise _Rejected("update.rejected", "not_configured", "no [updates] root_json configured")
        return TrustedRepository.from_directory(
            metadata_dir or self.store.tuf_dir,
            self.settings.root_json,
            repo_dir,
            limits=self.settings.limits,
            now=self.now,
        )

    def deploy(
        self, name: str, version: str, *, cmd_id: str | None = None, rollout_id: str | None = None
    ) -> Outcome:
        """The ``deploy`` command: fetch ``name@version`` through TUF from the fleet server and install it."""
        if not self._begin(cmd_id):
            log.info("duplicate command %s ignored", cmd_id)
            return Outcome("duplicate", f"command {cmd_id} was already handled")
        try:
            return self._install(lambda: self._http_repository(), name, version, cmd_id, rollout_id, False)
        finally:
            self._end(cmd_id)

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
                name, version = self._pick_release(repo_dir)
            except _Rejected as exc:
                return Outcome("rejected", str(exc), reason=exc.reason)
        return self._install(lambda: self._dir_repository(repo_dir), name, version, cmd_id, None, force)

    @staticmethod
    def _pick_release(repo_dir: Path) -> tuple[str, str]:
        """Which release a directory holds: ``release.json`` (fleet export), else its only/newest one.

        Only a hint: whatever is named is then verified through TUF like any other install.
        """
        try:
            info = json.loads((repo_dir / "release.json").read_bytes())
            return str(info["name"]), str(info["version"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        found: set[tuple[str, str]] = set()
        for p in (repo_dir / "targets").glob("*/*/*"):
            found.add((p.parent.parent.name, p.parent.name))
        names = {n for n, _ in found}
        if not names:
            raise _Rejected(
                "update.rejected",
                "no_release",
                f"{repo_dir} holds no release (no release.json, nothing under targets/): "
                "give the folder written by `fleet export` or `fleet release --repo`",
            )
        if len(names) != 1:
            raise _Rejected(
                "update.rejected", "ambiguous", f"{repo_dir} holds {len(names)} models; name one with --model"
            )
        try:
            return max(found, key=lambda nv: version_key(nv[1]))
        except ValueError as exc:
            raise _Rejected("update.rejected", "ambiguous", f"bad version directory in {repo_dir}") from exc

    def _facts(self, state: StoreState) -> DeviceFacts:
        return DeviceFacts(
            device_class=self.settings.device_class,
            agent_version=self.settings.agent_version,
            highest_accepted=dict(state.highest),
            failed=frozenset(state.failed),
        )

    def _stage(self, trust: TrustedRepository, name: str, version: str) -> tuple[Path, VerifiedRelease]:
        trust.refresh()
        release = trust.release(name, version)
        if MANIFEST_FILE not in release.targets:
            raise UpdateVerificationError(f"{release.ref} has no signed {MANIFEST_FILE}", reason="metadata")
        total = sum(t.length for t in release.targets.values())
        if total > self.settings.max_bundle_bytes:
            raise _Rejected(
                "update.rejected",
                "too_large",
                f"{release.ref} is {total} bytes, over this device's max_bundle_bytes "
                f"({self.settings.max_bundle_bytes})",
                {"bytes": total, "max_bundle_bytes": self.settings.max_bundle_bytes},
            )
        self.store.check_space(total)
        staged = self.store.new_staging()
        try:
            for i, (file, target) in enumerate(sorted(release.targets.items())):
                try:
                    trust.download(target, staged / file)
                except OSError as exc:
                    raise StoreError(
                        "disk full while staging" if exc.errno in (28, 122) else f"staging failed: {exc}"
                    ) from exc
                if i == 0:
                    self._fault("mid_stage")
        except BaseException:
            self.store.discard_staging(staged)
            raise
        return staged, release

    def _stage_with_retries(
        self, repo: Callable[[], TrustedRepository], name: str, version: str
    ) -> tuple[Path, VerifiedRelease, list[str]]:
        """``_stage`` with capped exponential backoff on transport failures (a cut network).

        Each attempt is a new TUF session from the trusted metadata on disk; a partial download
        is discarded with its staging directory, so a retry starts clean. Returns what failed.
        """
        retries: list[str] = []
        delay = self.settings.fetch_backoff_s
        for attempt in range(1, max(1, self.settings.fetch_attempts) + 1):
            try:
                staged, release = self._stage(repo(), name, version)
                return staged, release, retries
            except FetchError as exc:
                if attempt >= self.settings.fetch_attempts:
                    raise FetchError(f"{exc} (gave up after {attempt} attempts)") from exc
                retries.append(str(exc))
                log.warning(
                    "download of %s@%s failed (attempt %d/%d), retrying in %.1fs: %s",
                    name,
                    version,
                    attempt,
                    self.settings.fetch_attempts,
                    delay,
                    exc,
                )
                self.sleep(delay)
                delay = min(delay * 2, self.settings.fetch_backoff_max_s)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _install(
        self,
        repo: Callable[[], TrustedRepository],
        name: str,
        version: str,
        cmd_id: str | None,
        rollout_id: str | None,
        force: bool,
    ) -> Outcome:
        ctx = {"cmd_id": cmd_id, "rollout_id": rollout_id}
        self.emit(
            "update.started",
            message=f"installing {name}@{version}",
            data={"name": name, "version": version},
            **ctx,
        )
        staged: Path | None = None
        new_runner: Runner | None = None
        try:
            with self._lock:
                state = self.store.read_state()
                if state.active is not None and (state.active.name, state.active.version) == (name, version):
                    self.emit(
                        "update.installed",
                        message=f"{name}@{version} is already active",
                        model=_ref_msg(state.active),
                        data={"already_active": True},
                        **ctx,
                    )
                    if not state.probation:
                        self._committed_without_probation(state.active, "it was already active", ctx)
                    return Outcome("already_active", f"{name}@{version} is already active", state.active)
                staged, release, retries = self._stage_with_retries(repo, name, version)
                self._fault("after_download")
                manifest_bytes = (staged / MANIFEST_FILE).read_bytes()
                manifest = parse_manifest(manifest_bytes)
                check_release(
                    manifest,
                    signed_name=name,
                    signed_version=version,
                    signed_custom=release.custom,
                    device=self._facts(state),
                    force=force,
                )
                ref = BundleRef(hashlib.sha256(manifest_bytes).hexdigest(), name, version)
                self.emit(
                    "update.verified",
                    message=f"{ref.ref} verified (TUF, manifest, device class, agent version)",
                    model=_ref_msg(ref),
                    **ctx,
                )
                self._fault("after_verify")
                files = {f: (t.length, t.hashes["sha256"]) for f, t in release.targets.items()}
                with self.store.locked():
                    self.store.commit_staged(staged, files, ref)
                    staged = None
                    self._fault("after_rename")
                # Build, warm and self-test the new session beside the serving one.
                new_runner = self.load_runner(self.store.bundle_dir(ref))
                max_diff = run_selftest(new_runner, self.store.bundle_dir(ref), manifest)
                window = self._await_window(ref, ctx)
                with self.store.locked():
                    state = self.store.read_state()
                    new_state = store_rules.install(state, ref, cmd_id=cmd_id, rollout_id=rollout_id)
                    self.store.write_state(new_state)
                    self._state_mtime = self.store.state_mtime_ns()
                self._fault("after_state_write")
                choice = _provider_choice(new_runner)
                self.shadows.stop("candidate")  # a shadow of this or another candidate ends here
                reverse = self._reverse_shadow_for(new_state, manifest)
                swap = self._swap_in(new_runner, keep_old=reverse)
                new_runner = None
                self.emit(
                    "update.installed",
                    message=f"{ref.ref} installed and serving"
                    + (" (on probation)" if new_state.probation else ""),
                    model=_ref_msg(ref),
                    data={
                        "selftest_max_abs_diff": max_diff,
                        "probation": new_state.probation,
                        "swap": swap,
                        "fetch_retries": retries,
                        **({"window": window} if window else {}),
                        **choice,
                    },
                    **ctx,
                )
                if new_state.probation:
                    self._start_probation()
                    self.emit(
                        "probation.started",
                        message=f"{ref.ref} on probation for {manifest.probation.window_s}s",
                        model=_ref_msg(ref),
                        data={
                            "gates": manifest.probation.model_dump(),
                            "agreement_gates": manifest.agreement.model_dump(),
                            "reverse_shadow": self._reverse_shadow,
                        },
                        **ctx,
                    )
                else:
                    self.store.gc(new_state)
                    self._committed_without_probation(ref, "there is no previous model to roll back to", ctx)
                return Outcome(
                    "installed", f"{ref.ref} installed", ref, data={"probation": new_state.probation}
                )
        except _Rejected as exc:
            return self._reject(exc.kind, exc.reason, str(exc), ctx, name, version, exc.data)
        except UpdateVerificationError as exc:
            return self._reject("update.rejected", exc.reason, str(exc), ctx, name, version, exc.data)
        except (VerificationError, IncompatibleModelError, ManifestError, SelftestError) as exc:
            return self._reject("update.rejected", _reason_of(exc), str(exc), ctx, name, version)
        except (FetchError, StoreError, ModelLoadError, TimeoutError, OSError) as exc:
            return self._reject("update.failed", _reason_of(exc), str(exc), ctx, name, version)
        finally:
            if staged is not None:
                self.store.discard_staging(staged)
            if new_runner is not None:
                with contextlib.suppress(Exception):
                    new_runner.close()

    def _await_window(self, ref: BundleRef, ctx: dict[str, Any]) -> dict[str, Any]:
        """Wait for the line's update window (if one is configured) with the updater's lock released,
        so a rollback can run meanwhile (rollbacks are never deferred) and cancel this swap."""
        gate = self.window_gate
        if gate is None or self.host is None:
            return {}
        from edge_agent.robot_side import WindowCancelledError

        self._lock.release()
        try:
            return dict(gate.wait(ref, _ref_msg(ref), ctx))
        except WindowCancelledError as exc:
            raise _Rejected(
                "update.failed", "cancelled", f"swap cancelled while deferred: {exc.reason}"
            ) from exc
        finally:
            self._lock.acquire()

    def _committed_without_probation(self, ref: Any, why: str, ctx: dict[str, Any]) -> None:
        """Tell a rollout that waits for a probation verdict that this device is settled on ``ref``.

        A first install (nothing to roll back to) and a deploy of the version already serving are
        committed at once; without this the fleet would wait for a verdict that never comes.
        """
        self.emit(
            "probation.passed",
            message=f"{ref.ref} committed without probation: {why}",
            model=_ref_msg(ref),
            data={"probation": "skipped", "why": why},
            **ctx,
        )

    def _reject(
        self,
        kind: str,
        reason: str,
        message: str,
        ctx: dict[str, Any],
        name: str,
        version: str,
        data: dict[str, Any] | None = None,
    ) -> Outcome:
        # Nothing was installed: drop any bundle this attempt added that the state does not name.
        with contextlib.suppress(LinesideError, OSError):
            self.store.gc()
        self.emit(
            kind,
            level="error" if kind == "update.failed" else "warning",
            message=f"{name}@{version}: {message}",
            data={"reason": reason, "name": name, "version": version, **(data or {})},
            **ctx,
        )
        return Outcome("rejected" if kind == "update.rejected" else "failed", message, reason=reason)

    def _swap_in(self, runner: Runner, keep_old: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Hand ``runner`` to the inference loop between two frames; close the old one.

        ``keep_old(old)`` takes the old runner instead (probation's reverse shadow).
        """
        if self.host is None:
            runner.close()
            return {}
        t0 = time.perf_counter()
        old = self.host.swap_runner(runner, timeout_s=self.settings.swap_timeout_s)
        t1 = time.perf_counter()
        out: dict[str, Any] = {"handover_ms": round((t1 - t0) * 1000, 3)}
        meter = self.meter
        if meter is not None:
            # Let a few frames pass on the new model (bounded wait: the line may be idle).
            deadline = t1 + 1.0
            while meter.count_after(t1) < 10 and time.perf_counter() < deadline:
                time.sleep(0.005)  # polling the meter with a deadline, not synchronising on time
            out.update(meter.swap_stats(t0, t1))
        if old is not None and old is not runner:
            if keep_old is not None:
                keep_old(old)
            else:
                with contextlib.suppress(Exception):
                    old.close()
        return out

    # -- rollback ----------------------------------------------------------------------------------

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
        if not self._begin(cmd_id):
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
                    model=_ref_msg(self.store.read_state().active),
                    data={"reason": "deferred_cancelled", "requested": reason},
                    cmd_id=cmd_id,
                    rollout_id=rollout_id,
                )
                return Outcome("cancelled", "the deferred swap was cancelled")
            return self._rollback(
                cmd_id=cmd_id,
                rollout_id=rollout_id,
                reason=code,
                message=reason or "rollback requested",
            )
        finally:
            self._end(cmd_id)

    def _rollback(
        self,
        *,
        cmd_id: str | None,
        rollout_id: str | None,
        reason: str,
        message: str,
        evidence: dict[str, Any] | None = None,
        failed_probation: bool = False,
    ) -> Outcome:
        ctx = {"cmd_id": cmd_id, "rollout_id": rollout_id}
        gate = self.window_gate
        if gate is not None and gate.waiting:
            gate.cancel("rollback")  # an automatic rollback changes what the waiting swap replaces
        with self._lock:
            with self.store.locked():
                state = self.store.read_state()
                if state.previous is None or state.active is None:
                    self.emit(
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
                    self.store.verify_bundle(target)
                    runner = (
                        self.load_runner(self.store.bundle_dir(target)) if self.host is not None else None
                    )
                except LinesideError as exc:
                    self.emit(
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
                if self.host is None:
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
                self.store.write_state(new_state)
                self._state_mtime = self.store.state_mtime_ns()
            self._probation_since = None
            self._windows = []
            self._end_reverse_shadow()
            swap = self._swap_in(runner) if runner is not None else {}
            self.emit(
                "rollback",
                level="warning" if reason != "requested" else "info",
                message=f"rolled back from {failed.ref} to {target.ref}: {message}",
                model=_ref_msg(target),
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
                self.store.gc(new_state)
            return Outcome(
                "rolled_back", f"now serving {target.ref}", target, reason=reason, data=evidence or {}
            )

    # -- shadow ------------------------------------------------------------------------------------

    def _reverse_shadow_for(
        self, state: StoreState, manifest: Manifest, *, serving_sha256: str | None = None
    ) -> Callable[[Any], None] | None:
        """How the swap keeps the previous model running in shadow during probation, or None.

        Only on probation, with a host that can shadow, and not after a downgrade (a forced or
        signed downgrade is a person's deliberate word: it stands, and the event records it).
        """
        self._end_reverse_shadow()
        prev = state.previous
        if not state.probation or prev is None or state.active is None or not self.shadows.available:
            return None
        if serving_sha256 is not None and serving_sha256 != prev.sha256:
            return None  # the model serving now is not the one probation would fall back to
        try:
            if version_key(state.active.version) < version_key(prev.version):
                return None
        except ValueError:
            return None

        def keep(old: Any) -> None:
            self._reverse_shadow = (
                self.shadows.start(old, role="baseline", confident=manifest.drift.low_confidence) is not None
            )

        return keep

    def deploy_shadow(
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
        if not self._begin(cmd_id):
            return Outcome("duplicate", f"command {cmd_id} was already handled")
        ctx = {"cmd_id": cmd_id, "rollout_id": rollout_id}
        staged: Path | None = None
        runner: Runner | None = None
        try:
            if not self.shadows.available:
                raise _Rejected("update.rejected", "no_shadow", "this agent has no inference loop to shadow")
            state = self.store.read_state()
            staged, release, _ = self._stage_with_retries(repo or self._http_repository, name, version)
            manifest_bytes = (staged / MANIFEST_FILE).read_bytes()
            manifest = parse_manifest(manifest_bytes)
            check_release(
                manifest,
                signed_name=name,
                signed_version=version,
                signed_custom=release.custom,
                device=self._facts(state),
            )
            runner = self.load_runner(staged)
            run_selftest(runner, staged, manifest)
            ref = BundleRef(hashlib.sha256(manifest_bytes).hexdigest(), name, version)
            dir_ = staged
            self.shadows.start(
                runner,
                role="candidate",
                confident=manifest.drift.low_confidence,
                on_close=lambda: self.store.discard_staging(dir_),
            )
            staged = runner = None
            self.emit(
                "shadow.started",
                message=f"{ref.ref} verified and running in shadow (never acting)",
                model=_ref_msg(ref),
                data={"every_n": self.shadows.every_n, "max_cpu_share": self.shadows.max_cpu_share},
                **ctx,
            )
            return Outcome("verified", f"{ref.ref} runs in shadow", ref, data={"mode": "shadow"})
        except _Rejected as exc:
            return self._reject(exc.kind, exc.reason, str(exc), ctx, name, version, exc.data)
        except (VerificationError, IncompatibleModelError, ManifestError, SelftestError) as exc:
            return self._reject("update.rejected", _reason_of(exc), str(exc), ctx, name, version)
        except (FetchError, StoreError, ModelLoadError, OSError) as exc:
            return self._reject("update.failed", _reason_of(exc), str(exc), ctx, name, version)
        finally:
            if runner is not None:
                with contextlib.suppress(Exception):
                    runner.close()
            if staged is not None:
                self.store.discard_staging(staged)
            self._end(cmd_id)

    def stop_shadow(self, *, cmd_id: str | None = None, rollout_id: str | None = None) -> Outcome:
        """The ``stop_shadow`` command: end a shadow deploy (its staged files are deleted)."""
        stopped = self.shadows.stop("candidate")
        ref = stopped.candidate_ref if stopped is not None else None
        self.emit(
            "shadow.stopped",
            message=f"{ref.name}@{ref.version} no longer runs in shadow" if ref else "no shadow was running",
            model=ref,
            data={"was_running": stopped is not None},
            cmd_id=cmd_id,
            rollout_id=rollout_id,
        )
        return Outcome("verified", "shadow stopped")

    def install_shadow_from_dir(
        self, repo_dir: Path, *, name: str | None = None, version: str | None = None
    ) -> Outcome:
        """``edge-agent install DIR --shadow``: verify like an install, hand the candidate to the
        daemon to run in shadow (:mod:`edge_agent.shadow_sideload`). Nothing is installed."""
        repo_dir = Path(repo_dir)
        ctx: dict[str, Any] = {"cmd_id": None, "rollout_id": None}
        name = name or ""
        version = version or ""
        staged: Path | None = None
        try:
            if not name or not version:
                name, version = self._pick_release(repo_dir)
            state = self.store.read_state()
            staged, release, _ = self._stage_with_retries(
                lambda: self._dir_repository(repo_dir), name, version
            )
            manifest_bytes = (staged / MANIFEST_FILE).read_bytes()
            manifest = parse_manifest(manifest_bytes)
            check_release(
                manifest,
                signed_name=name,
                signed_version=version,
                signed_custom=release.custom,
                device=self._facts(state),
            )
            runner = self.load_runner(staged)
            try:
                run_selftest(runner, staged, manifest)
            finally:
                runner.close()
            files = {f: (t.length, t.hashes["sha256"]) for f, t in release.targets.items()}
            with self.store.locked():
                publish_request(self.store.root, staged, name, version, files)
            staged = None
            ref = BundleRef(hashlib.sha256(manifest_bytes).hexdigest(), name, version)
            return Outcome(
                "verified",
                f"{ref.ref} verified; the running agent runs it in shadow from its next telemetry window",
                ref,
                data={"mode": "shadow"},
            )
        except _Rejected as exc:
            return self._reject(exc.kind, exc.reason, str(exc), ctx, name, version, exc.data)
        except (VerificationError, IncompatibleModelError, ManifestError, SelftestError) as exc:
            return self._reject("update.rejected", _reason_of(exc), str(exc), ctx, name, version)
        except (FetchError, StoreError, ModelLoadError, OSError) as exc:
            return self._reject("update.failed", _reason_of(exc), str(exc), ctx, name, version)
        finally:
            if staged is not None:
                self.store.discard_staging(staged)

    def check_shadow_request(self) -> bool:
        """Daemon side of ``install --shadow``: start or stop the side-loaded shadow. True if changed."""
        if not self.shadows.available:
            return False
        _, cand, req = shadow_paths(self.store.root)
        try:
            mtime = req.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        if mtime == self._shadow_request_mtime:
            return False
        self._shadow_request_mtime = mtime
        if mtime == 0:
            if self._sideload_shadow:
                stopped = self.shadows.stop("candidate")
                self._sideload_shadow = False
                ref = stopped.candidate_ref if stopped is not None else None
                self.emit(
                    "shadow.stopped",
                    message="the side-loaded shadow was withdrawn (edge-agent install --shadow-stop)",
                    model=ref,
                    data={"source": "cli", "was_running": stopped is not None},
                )
            return True
        try:
            request = read_request(self.store.root)
            if request is None:
                return False
            runner = self.load_runner(cand)
        except (ValueError, KeyError, OSError, LinesideError) as exc:
            self.emit(
                "update.rejected",
                level="error",
                message=f"side-loaded shadow refused: {exc}",
                data={"reason": "shadow_files", "source": "cli"},
            )
            return False
        self.shadows.start(runner, role="candidate", confident=runner.manifest.drift.low_confidence)
        self._sideload_shadow = True
        self.emit(
            "shadow.started",
            message=f"{request['name']}@{request['version']} runs in shadow (side-loaded, never acting)",
            model=ModelRef(name=request["name"], version=request["version"], sha256=request["sha256"]),
            data={"source": "cli", "every_n": self.shadows.every_n},
        )
        return True

    def _end_reverse_shadow(self) -> None:
        if self._reverse_shadow:
            self.shadows.stop("baseline")
        self._reverse_shadow = False

    def _with_agreement(
        self, result: ProbationResult, windows: list[Telemetry], manifest: Manifest, active_sha256: str
    ) -> ProbationResult:
        """Add the reverse shadow's agreement verdicts to the health verdict (see the module docstring).

        Both are judged at the end of the probation window (a broken irreversible health gate
        still fails at once): a disagreement proven at the manifest's confidence fails probation,
        a pass needs both, and an undecided agreement keeps probation running.
        """
        if not self._reverse_shadow:
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

    # -- probation ---------------------------------------------------------------------------------

    def _start_probation(self) -> None:
        self._probation_since = self.now()
        self._windows = []

    def on_window(self, telemetry: Telemetry) -> None:
        """Agent window listener: judge probation, notice external store changes."""
        try:
            self.check_external_change()
            self.check_shadow_request()
            self._judge(telemetry)
        except Exception:  # a listener must never kill the telemetry thread
            log.exception("updater window handling failed")

    def _judge(self, telemetry: Telemetry) -> ProbationResult | None:
        with self._lock:
            since = self._probation_since
            if since is None:
                return None
            state = self.store.read_state()
            if not state.probation or state.active is None:
                self._probation_since = None
                return None
            self._fault("during_probation")
            self._windows.append(telemetry)
            windows = relevant_windows(self._windows, since=since, model_sha256=state.active.sha256)
            manifest = Manifest.model_validate_json(
                (self.store.bundle_dir(state.active) / MANIFEST_FILE).read_bytes()
            )
            result = self._with_agreement(
                judge(manifest.probation, windows), windows, manifest, state.active.sha256
            )
            if result.verdict == "pass":
                with self.store.locked():
                    state = self.store.read_state()
                    if not state.probation or state.active is None:
                        return result
                    new_state = store_rules.commit(state)
                    self.store.write_state(new_state)
                    self._state_mtime = self.store.state_mtime_ns()
                self._probation_since = None
                self._windows = []
                self._end_reverse_shadow()
                self.emit(
                    "probation.passed",
                    message=f"{state.active.ref} passed probation: committed",
                    model=_ref_msg(state.active),
                    data={"evidence": result.evidence},
                    cmd_id=state.probation_cmd_id,
                    rollout_id=state.probation_rollout_id,
                )
                self.store.gc(new_state)
            elif result.verdict == "fail":
                self._rollback(
                    cmd_id=None,
                    rollout_id=None,
                    reason="probation_failed",
                    message=result.reason,
                    evidence={**result.evidence, "failed_gates": list(result.failed_gates)},
                    failed_probation=True,
                )
            return result

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
        with self._lock:
            self._state_mtime = mtime
            state = self.store.read_state()
            current = getattr(self.host.runner, "sha256", None)
            if state.active is None or state.active.sha256 == current:
                return False
            runner = self.load_runner(self.store.bundle_dir(state.active))
            self.shadows.stop("candidate")
            manifest = Manifest.model_validate_json(
                (self.store.bundle_dir(state.active) / MANIFEST_FILE).read_bytes()
            )
            reverse = self._reverse_shadow_for(state, manifest, serving_sha256=current)
            swap = self._swap_in(runner, keep_old=reverse)
            if state.probation:
                self._start_probation()
            else:
                self._probation_since = None
            note = state.local_change or {}
            if note.get("kind") == "rollback" and note.get("active") == state.active.sha256:
                self.emit("rollback", **self._local_rollback_event(state.active, note, swap))
                with self.store.locked():  # reported: a restart must not report it again
                    now_state = self.store.read_state()
                    if now_state.local_change == state.local_change:
                        self.store.write_state(replace(now_state, local_change=None))
                    self._state_mtime = self.store.state_mtime_ns()
                return True
            self.emit(
                "update.installed",
                message=f"{state.active.ref} activated from the local store (installed by the CLI)",
                model=_ref_msg(state.active),
                data={"source": "cli", "probation": state.probation, "reverse_shadow": self._reverse_shadow},
            )
            return True

    @staticmethod
    def _local_rollback_event(
        active: BundleRef, note: Mapping[str, Any], swap: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``rollback`` event for a rollback made by ``edge-agent rollback`` (reason ``operator``)."""
        return {
            "level": "info",
            "message": f"rolled back to {active.ref} by a local operator (edge-agent rollback)",
            "model": _ref_msg(active),
            "data": {
                "reason": str(note.get("reason") or "operator"),
                "failed_model": note.get("from"),
                "evidence": {},
                "swap": swap,
                "source": "cli",
            },
        }

    # -- verify only -------------------------------------------------------------------------------

    def verify_dir(self, repo_dir: Path, *, name: str | None = None, version: str | None = None) -> Outcome:
        """``edge-agent verify DIR``: the whole check (TUF, manifest, device, self-test), nothing installed.

        Runs on a throw-away copy of the trusted metadata so not even that changes.
        """
        repo_dir = Path(repo_dir)
        tmp = Path(tempfile.mkdtemp(prefix="verify-", dir=self.store.staging))
        try:
            md = tmp / "tuf"
            shutil.copytree(self.store.tuf_dir, md, symlinks=True)
            if name is None or version is None:
                name, version = self._pick_release(repo_dir)
            trust = self._dir_repository(repo_dir, md)
            staged, release = self._stage(trust, name, version)
            try:
                manifest_bytes = (staged / MANIFEST_FILE).read_bytes()
                manifest = parse_manifest(manifest_bytes)
                check_release(
                    manifest,
                    signed_name=name,
                    signed_version=version,
                    signed_custom=release.custom,
                    device=self._facts(self.store.read_state()),
                )
                runner = self.load_runner(staged)
                try:
                    max_diff = run_selftest(runner, staged, manifest)
                finally:
                    runner.close()
            finally:
                self.store.discard_staging(staged)
            ref = BundleRef(hashlib.sha256(manifest_bytes).hexdigest(), name, version)
            return Outcome(
                "verified",
                f"{ref.ref} verifies: signatures, hashes, manifest, device class, self-test",
                ref,
                data={"files": sorted(release.targets), "selftest_max_abs_diff": max_diff},
            )
        except _Rejected as exc:
            return Outcome("rejected", str(exc), reason=exc.reason)
        except (LinesideError, OSError) as exc:
            return Outcome("rejected", str(exc), reason=_reason_of(exc))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


STORE_SUBDIR = "models"


def store_dir(state_dir: Path) -> Path:
    """Where the model store lives under the agent's state directory."""
    return Path(state_dir) / STORE_SUBDIR


def settings_from_config(config: Any) -> UpdaterSettings:
    """UpdaterSettings from an AgentConfig (its optional ``updates`` section)."""
    up = getattr(config, "updates", None)
    base: dict[str, Any] = {"device_class": config.device_class}
    if up is not None:
        base.update(
            root_json=up.root_json,
            repository_url=up.repository_url,
            token_file=up.token_file,
            limits=FetchLimits(
                root_max_bytes=up.root_max_bytes,
                timestamp_max_bytes=up.timestamp_max_bytes,
                snapshot_max_bytes=up.snapshot_max_bytes,
                targets_max_bytes=up.targets_max_bytes,
            ),
            crash_loop_threshold=up.crash_loop_threshold,
            reserve_bytes=up.reserve_bytes,
            swap_timeout_s=up.swap_timeout_s,
            fault_point=up.fault_point,
            fetch_attempts=up.fetch_attempts,
            fetch_backoff_s=up.fetch_backoff_s,
            fetch_backoff_max_s=up.fetch_backoff_max_s,
            max_bundle_bytes=up.max_bundle_bytes,
        )
    return UpdaterSettings(**base)


def _provider_choice(runner: Any) -> dict[str, Any]:
    """The serving provider and, when chosen by measurement, every candidate's self-test ms."""
    choice = getattr(runner, "choice", None)
    if choice is None:
        return {}
    return {"provider": choice.provider, "provider_timings_ms": dict(choice.timings_ms)}


def daemon_updater(config: Any, on_fallback: Callable[[str, str], None] | None = None) -> Updater:
    """The updater a running agent uses: the store under ``state_dir``, ModelRunner with the config."""
    from edge_agent.runtime import ModelRunner

    settings = settings_from_config(config)
    store = ModelStore(store_dir(config.state_dir), reserve_bytes=settings.reserve_bytes)

    def load(bundle_dir: Path) -> Runner:
        return ModelRunner.load(bundle_dir, inference=config.inference, on_fallback=on_fallback)

    updater = Updater(store, settings, load_runner=load)
    shadow = getattr(config, "shadow", None)
    if shadow is not None:
        updater.shadows.every_n = shadow.every_n
        updater.shadows.max_cpu_share = shadow.max_cpu_share
        updater.shadows.nice = shadow.nice
    return updater


def attach_to_agent(agent: Any, updater: Updater) -> None:
    """Wire the updater into a running Agent: commands, telemetry windows, state message."""

    deploys: queue.Queue[Any] = queue.Queue()
    worker: list[threading.Thread] = []

    def run_deploys() -> None:
        # Same reason as the command worker's nice value: installs yield to inference.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), agent.config.inference.update_nice)
        while True:
            cmd = deploys.get()
            try:
                updater.deploy(cmd.name, cmd.version, cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id)
            except Exception:
                log.exception("deploy %s@%s failed", cmd.name, cmd.version)

    def deploy(cmd: Any) -> None:
        sampler = getattr(agent, "sampler", None)
        if cmd.mode != "shadow" and sampler is not None:
            # The rollout's sampling overrides, applied while this release serves (docs/samples.md).
            sampler.set_rollout_sampling(cmd.name, cmd.version, getattr(cmd, "sampling", None))
        if cmd.mode == "shadow":
            # A shadow never swaps, so it never waits for the line's update window.
            updater.deploy_shadow(cmd.name, cmd.version, cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id)
            return
        if updater.window_gate is None:
            updater.deploy(cmd.name, cmd.version, cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id)
            return
        # With an update window a deploy may wait for the line for a long time: it waits on its own
        # worker so the command worker stays free for rollbacks (never deferred) and pings. A daemon
        # thread: stopping the agent must not wait for the line (the fleet re-sends the deploy to
        # an agent that restarted while deferred).
        if not worker:
            worker.append(threading.Thread(target=run_deploys, name="updates", daemon=True))
            worker[0].start()
        deploys.put(cmd)

    def stop_shadow(cmd: Any) -> None:
        updater.stop_shadow(cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id)

    def rollback(cmd: Any) -> None:
        updater.rollback(cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id, reason=cmd.reason)

    meter = DecisionMeter()
    previous_hook = agent.on_decision
    if previous_hook is None:
        agent.on_decision = meter
    else:

        def both(decision: Any) -> None:
            previous_hook(decision)
            meter(decision)

        agent.on_decision = both
    updater.meter = meter
    updater.attach(agent)
    agent.set_command_handler("deploy", deploy)
    agent.set_command_handler("rollback", rollback)
    agent.set_command_handler("stop_shadow", stop_shadow)
    agent.add_window_listener(updater.on_window)
    agent.set_model_info(updater.model_info)
