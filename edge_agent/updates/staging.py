"""The one staging pipeline every update path uses: deploy, ``install DIR``, ``verify DIR``, a
shadow deploy and the shadow side-load.

:func:`stage_verified` refreshes TUF from this device's trust anchor, checks the release's size
against this device's limit and the disk, downloads its signed files into ``staging/`` (bounded by
their signed lengths, hashes checked), then checks the manifest against what was signed and this
device (:func:`edge_agent.acceptance.check_release`). A download cut by the network is retried
from a fresh TUF session with :func:`lineside_common.retry.retry` (``fetch_backoff_s`` doubling to
``fetch_backoff_max_s``, no wait after the last attempt); a verification failure never is. What
the caller does with the verified directory — install it, run it in shadow, hand it to the daemon,
or only self-test it — is its own business.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from edge_agent.acceptance import DeviceFacts, check_release
from edge_agent.manifest import MANIFEST_FILE, Manifest, parse_manifest, version_key
from edge_agent.selftest import run_selftest
from edge_agent.store import ModelStore, store_error
from edge_agent.store_rules import BundleRef, StoreState
from edge_agent.trust import TrustedRepository, UpdateVerificationError, VerifiedRelease, read_token_file
from edge_agent.updates.outcome import Outcome, refusal
from edge_agent.updates.seams import Runner
from edge_agent.updates.settings import UpdaterSettings, fault
from lineside_common.errors import FetchError, LinesideError, UpdateRefusedError
from lineside_common.retry import Backoff, retry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedRelease:
    """A release downloaded into ``staging/`` and verified (TUF, manifest, this device)."""

    dir: Path
    release: VerifiedRelease
    manifest: Manifest
    ref: BundleRef  # its manifest's sha256 is the bundle's identity
    retries: list[str] = field(default_factory=list)  # the transport failures retried

    @property
    def files(self) -> dict[str, tuple[int, str]]:
        """``{FILE: (length, sha256)}`` as signed."""
        return {f: (t.length, t.hashes["sha256"]) for f, t in self.release.targets.items()}


def device_facts(settings: UpdaterSettings, state: StoreState) -> DeviceFacts:
    """What a release is checked against on this device."""
    return DeviceFacts(
        device_class=settings.device_class,
        agent_version=settings.agent_version,
        highest_accepted=dict(state.highest),
        failed=frozenset(state.failed),
    )


def http_repository(
    store: ModelStore, settings: UpdaterSettings, now: Callable[[], datetime]
) -> TrustedRepository:
    """A TUF session against the fleet server, with this device's token (read now: rotation)."""
    if not settings.repository_url or settings.root_json is None:
        raise UpdateRefusedError("no [updates] repository_url/root_json configured", reason="not_configured")
    token = None
    if settings.token_file is not None:
        try:
            token = read_token_file(settings.token_file)
        except FetchError as exc:  # a local misconfiguration: retrying cannot help
            raise UpdateRefusedError(str(exc), reason="not_configured") from exc
    return TrustedRepository.over_http(
        store.tuf_dir,
        settings.root_json,
        settings.repository_url,
        token=token,
        limits=settings,
        now=now,
    )


def dir_repository(
    store: ModelStore,
    settings: UpdaterSettings,
    now: Callable[[], datetime],
    repo_dir: Path,
    metadata_dir: Path | None = None,
) -> TrustedRepository:
    """A TUF session against a local repository directory (a USB export)."""
    if settings.root_json is None:
        raise UpdateRefusedError("no [updates] root_json configured", reason="not_configured")
    return TrustedRepository.from_directory(
        metadata_dir or store.tuf_dir, settings.root_json, repo_dir, limits=settings, now=now
    )


def pick_release(repo_dir: Path) -> tuple[str, str]:
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
        raise UpdateRefusedError(
            f"{repo_dir} holds no release (no release.json, nothing under targets/): "
            "give the folder written by `fleet export` or `fleet release --repo`",
            reason="no_release",
        )
    if len(names) != 1:
        raise UpdateRefusedError(
            f"{repo_dir} holds {len(names)} models; name one with --model", reason="ambiguous"
        )
    try:
        return max(found, key=lambda nv: version_key(nv[1]))
    except ValueError as exc:
        raise UpdateRefusedError(f"bad version directory in {repo_dir}", reason="ambiguous") from exc


def _download(
    trust: TrustedRepository, name: str, version: str, *, store: ModelStore, settings: UpdaterSettings
) -> tuple[Path, VerifiedRelease]:
    """One attempt: refresh TUF, check the size, download every signed file into a fresh staging dir."""
    trust.refresh()
    release = trust.release(name, version)
    if MANIFEST_FILE not in release.targets:
        raise UpdateVerificationError(f"{release.ref} has no signed {MANIFEST_FILE}", reason="metadata")
    total = sum(t.length for t in release.targets.values())
    if total > settings.max_bundle_bytes:
        raise UpdateRefusedError(
            f"{release.ref} is {total} bytes, over this device's max_bundle_bytes "
            f"({settings.max_bundle_bytes})",
            reason="too_large",
            data={"bytes": total, "max_bundle_bytes": settings.max_bundle_bytes},
        )
    store.check_space(total)
    staged = store.new_staging()
    try:
        for i, (file, target) in enumerate(sorted(release.targets.items())):
            try:
                trust.download(target, staged / file)
            except OSError as exc:
                raise store_error(exc, "staging", detail=str(exc)) from exc
            if i == 0:
                fault(settings, "mid_stage")
    except BaseException:
        store.discard_staging(staged)
        raise
    return staged, release


def stage_verified(
    repository: Callable[[], TrustedRepository],
    name: str,
    version: str,
    facts: DeviceFacts,
    *,
    store: ModelStore,
    settings: UpdaterSettings,
    force: bool = False,
    sleep: Callable[[float], object] = time.sleep,
) -> StagedRelease:
    """Download ``name@version`` into ``staging/`` and verify it (TUF, manifest, ``facts``).

    ``repository()`` opens a new TUF session for each attempt (from the trusted metadata on
    disk); a partial download is discarded with its staging directory, so a retry starts clean.
    The caller owns the returned directory (``store.commit_staged`` or ``store.discard_staging``).
    """
    retries: list[str] = []
    attempts = max(1, settings.fetch_attempts)

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        retries.append(str(exc))
        log.warning(
            "download of %s@%s failed (attempt %d/%d), retrying in %.1fs: %s",
            name,
            version,
            attempt,
            settings.fetch_attempts,
            delay,
            exc,
        )

    try:
        staged, release = retry(
            lambda: _download(repository(), name, version, store=store, settings=settings),
            attempts=attempts,
            backoff=Backoff(settings.fetch_backoff_s, settings.fetch_backoff_max_s, jitter=False),
            retry_on=(FetchError,),
            sleep=sleep,
            on_retry=on_retry,
        )
    except FetchError as exc:
        raise FetchError(f"{exc} (gave up after {attempts} attempts)") from exc
    try:
        fault(settings, "after_download")
        manifest_bytes = (staged / MANIFEST_FILE).read_bytes()
        manifest = parse_manifest(manifest_bytes)
        check_release(
            manifest,
            signed_name=name,
            signed_version=version,
            signed_custom=release.custom,
            device=facts,
            force=force,
        )
    except BaseException:
        store.discard_staging(staged)
        raise
    ref = BundleRef(hashlib.sha256(manifest_bytes).hexdigest(), name, version)
    return StagedRelease(staged, release, manifest, ref, retries)


def load_selftested(
    load_runner: Callable[[Path], Runner], bundle_dir: Path, manifest: Manifest
) -> tuple[Runner, float]:
    """Load the model in ``bundle_dir`` and self-test it on this device: (the warm runner, max |diff|).

    The runner is closed if the self-test fails.
    """
    runner = load_runner(bundle_dir)
    try:
        return runner, run_selftest(runner, bundle_dir, manifest)
    except BaseException:
        with contextlib.suppress(Exception):
            runner.close()
        raise


def verify_release(
    store: ModelStore,
    settings: UpdaterSettings,
    now: Callable[[], datetime],
    load_runner: Callable[[Path], Runner],
    repo_dir: Path,
    *,
    name: str | None = None,
    version: str | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> Outcome:
    """``edge-agent verify DIR``: the whole check (TUF, manifest, device, self-test), nothing installed.

    Runs on a throw-away copy of the trusted metadata so not even that changes.
    """
    tmp = Path(tempfile.mkdtemp(prefix="verify-", dir=store.staging))
    try:
        md = tmp / "tuf"
        shutil.copytree(store.tuf_dir, md, symlinks=True)
        if name is None or version is None:
            name, version = pick_release(repo_dir)
        trust = dir_repository(store, settings, now, repo_dir, md)
        facts = device_facts(settings, store.read_state())
        staged = stage_verified(
            lambda: trust, name, version, facts, store=store, settings=settings, sleep=sleep
        )
        try:
            runner, max_diff = load_selftested(load_runner, staged.dir, staged.manifest)
            runner.close()
        finally:
            store.discard_staging(staged.dir)
        return Outcome(
            "verified",
            f"{staged.ref.ref} verifies: signatures, hashes, manifest, device class, self-test",
            staged.ref,
            data={"files": sorted(staged.release.targets), "selftest_max_abs_diff": max_diff},
        )
    except (LinesideError, OSError) as exc:
        return Outcome("rejected", str(exc), reason=refusal(exc)[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
