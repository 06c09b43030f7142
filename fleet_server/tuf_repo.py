"""The fleet's TUF repository on disk: accept signed releases, keep snapshot/timestamp fresh, export.

Layout (the fleet server serves ``REPO`` as-is; devices and USB exports use the same one)::

    REPO/metadata/{N}.root.json        every root version (devices walk rotations 1 → N)
    REPO/metadata/root.json            copy of the newest root (for people and tools)
    REPO/metadata/{N}.targets.json     consistent snapshots: every targets version stays
    REPO/metadata/targets.json         copy of the newest targets (what `fleet release --server` extends)
    REPO/metadata/{N}.snapshot.json    consistent snapshots
    REPO/metadata/snapshot.json        copy of the newest snapshot
    REPO/metadata/timestamp.json       always this name (TUF's entry point), re-signed before expiry
    REPO/targets/NAME/VERSION/{sha256}.FILE   bundle files, hash-prefixed (consistent snapshots)
    REPO/.lock                         one writer at a time (flock); never served
                                       (``fleet serve`` takes the database's publish lock first:
                                       replicas sharing REPO on a network filesystem take turns)

``root.consistent_snapshot`` is true, so a device that downloads while a release is being
written never sees a mix: every file it fetches is named by version or hash.

Publishing is atomic: *published* is what ``timestamp.json`` leads to (timestamp →
``{M}.snapshot.json`` → ``{N}.targets.json`` → target files), and every reader here and the
server's ``/tuf/metadata/{targets,snapshot}.json`` follow that chain, never the unversioned
copies. A release signs everything first (a missing online key refuses it before any write), then,
under ``REPO/.lock``, writes the new files (unreferenced until the end) and replaces
``timestamp.json`` last. An error undoes its writes; a crash leaves only unreferenced files, which
:meth:`Repository.heal` removes when the repository is next opened for writing. Either way the
same release can simply be retried. HTTP (fleet server): ``GET /tuf/metadata/{file}`` and
``GET /tuf/targets/{path}``; devices use ``metadata_base_url = {server}/tuf/metadata/`` and
``target_base_url = {server}/tuf/targets/``.

Targets paths are ``NAME/VERSION/FILE``; each target's ``custom`` carries the manifest's
``name``, ``version``, ``device_classes`` (and optionally ``allow_downgrade``). Released paths are
immutable: a new targets version may add targets but never change or drop a released one.

Keys: the targets role is signed offline (``fleet release``); the server holds only the online
snapshot and timestamp keys (``online_keys_dir``, a keys directory with just those two private
keys), so a stolen server cannot make a device install anything.

Size: one concern, the server's TUF repository (open, publish under its locks, refresh the
online roles); the publishing steps are kept together so that one reading shows a crash at any
point publishes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from edge_agent.acceptance import split_target_path
from edge_agent.trust import issued_fields
from fleet_server import keys as keymod
from fleet_server.release_check import check_release_files
from fleet_server.release_sign import AlreadyReleasedError, build_release_targets
from lineside_common.atomic import atomic_write_bytes, fsync_dir
from lineside_common.errors import ConfigError, StoreError, VerificationError

# Re-exported: the signing half lives in release_sign (it runs offline, beside the targets key).
__all__ = ["AlreadyReleasedError", "ReleaseInfo", "Repository", "build_release_targets", "release_local"]

log = logging.getLogger(__name__)

METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
LOCK_FILE = ".lock"
# A lock held around every write to the repository (see ``Repository.writer_lock``).
WriterLock = Callable[[], contextlib.AbstractContextManager[None]]
_VERSIONED = re.compile(r"([0-9]+)\.(snapshot|targets)\.json")


@dataclass(frozen=True)
class ReleaseInfo:
    """One released bundle as the repository lists it."""

    name: str
    version: str
    device_classes: list[str]
    files: dict[str, dict[str, Any]]  # FILE → {"length", "sha256", "path"}
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "device_classes": self.device_classes,
            "files": self.files,
            "created": self.created,
        }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def target_file_name(path: str, sha256: str) -> str:
    """Where a target lives under ``REPO/targets`` with consistent snapshots."""
    dirname, _, base = path.rpartition("/")
    return f"{dirname}/{sha256}.{base}"


class Repository:
    """A TUF repository directory plus the online keys that keep it fresh. No HTTP in here.

    What is published is what ``timestamp.json`` leads to (timestamp → ``{M}.snapshot.json`` →
    ``{N}.targets.json`` → target files); every reader here follows that chain, never the
    unversioned ``targets.json``/``snapshot.json`` copies. A release is published by writing its
    new, not-yet-referenced files first and replacing ``timestamp.json`` last, under a lock
    (``REPO/.lock``), after every signature has been made: an error undoes what it wrote, a crash
    leaves only unreferenced files, which :meth:`heal` removes (the server calls it at start and
    before each release). So a failed release is retried with the same bundle.
    """

    def __init__(
        self, repo_dir: Path, online_keys_dir: Path | None, *, writer_lock: WriterLock | None = None
    ) -> None:
        self.repo_dir = Path(repo_dir)
        # Taken around ``REPO/.lock`` by every write: the fleet server passes the database's
        # publishing lock, so replicas sharing this directory publish one at a time even where
        # the shared filesystem's own locks cannot be trusted.
        self.writer_lock = writer_lock
        self.metadata_dir = self.repo_dir / METADATA_DIR
        self.targets_dir = self.repo_dir / TARGETS_DIR
        self.online_keys_dir = Path(online_keys_dir) if online_keys_dir else None
        self.expiry_days = keymod.load_expiry_days(self.online_keys_dir)
        if not (self.metadata_dir / "root.json").exists():
            raise StoreError(f"{self.repo_dir} is not a TUF repository (no metadata/root.json)")

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        repo_dir: Path,
        root_json: bytes,
        online_keys_dir: Path | None,
        *,
        writer_lock: WriterLock | None = None,
    ) -> Repository:
        """Start a repository from a signed root.json (from ``fleet keys init``)."""
        root = Metadata[Root].from_bytes(root_json)
        root.verify_delegate(Root.type, root)  # self-signed, or it is not a root
        md_dir = Path(repo_dir) / METADATA_DIR
        md_dir.mkdir(parents=True, exist_ok=True)
        (Path(repo_dir) / TARGETS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(md_dir / f"{root.signed.version}.root.json", root_json)
        atomic_write_bytes(md_dir / "root.json", root_json)
        return cls(repo_dir, online_keys_dir, writer_lock=writer_lock)

    @classmethod
    def open(cls, repo_dir: Path, online_keys_dir: Path | None) -> Repository:
        return cls(repo_dir, online_keys_dir)

    @classmethod
    def open_or_create(
        cls, repo_dir: Path, keys_dir: Path, *, writer_lock: WriterLock | None = None
    ) -> Repository:
        """Open for writing (``fleet serve``, ``fleet release --repo``): created on first use, healed.

        The keys directory holds root.json and the online keys.
        """
        if (Path(repo_dir) / METADATA_DIR / "root.json").exists():
            repo = cls(repo_dir, keys_dir, writer_lock=writer_lock)
        else:
            repo = cls.create(
                repo_dir, (Path(keys_dir) / keymod.ROOT_FILE).read_bytes(), keys_dir, writer_lock=writer_lock
            )
        repo.heal()
        return repo

    # -- reading ---------------------------------------------------------------------------------

    def root(self) -> Metadata[Root]:
        return Metadata[Root].from_bytes((self.metadata_dir / "root.json").read_bytes())

    def _load(self, name: str) -> Metadata[Any] | None:
        path = self.metadata_dir / name
        if not path.exists():
            return None
        return Metadata.from_bytes(path.read_bytes())

    def published(
        self,
    ) -> tuple[Metadata[Timestamp] | None, Metadata[Snapshot] | None, Metadata[Targets] | None]:
        """(timestamp, snapshot, targets) as a device sees them: the chain from ``timestamp.json``."""
        ts = self._load("timestamp.json")
        if ts is None:
            return None, None, None
        snap = self._load(f"{ts.signed.snapshot_meta.version}.snapshot.json")
        if snap is None:
            raise StoreError(
                f"timestamp.json names snapshot v{ts.signed.snapshot_meta.version}, which is missing"
            )
        targets_meta = snap.signed.meta.get("targets.json")
        targets = self._load(f"{targets_meta.version}.targets.json") if targets_meta else None
        if targets_meta is not None and targets is None:
            raise StoreError(
                f"snapshot v{snap.signed.version} names targets v{targets_meta.version}, which is missing"
            )
        return ts, snap, targets

    def targets(self) -> Metadata[Targets] | None:
        return self.published()[2]

    def snapshot(self) -> Metadata[Snapshot] | None:
        return self.published()[1]

    def timestamp(self) -> Metadata[Timestamp] | None:
        return self._load("timestamp.json")

    def metadata_file(self, name: str) -> Path:
        """The file to serve for ``/tuf/metadata/{name}``.

        ``targets.json`` and ``snapshot.json`` are the published versions (what timestamp.json
        leads to), so a client never reads a version that is not (or no longer) published.
        """
        if name in ("targets.json", "snapshot.json"):
            _, snap, targets = self.published()
            md = snap if name == "snapshot.json" else targets
            if md is None:
                return self.metadata_dir / f".unpublished.{name}"  # does not exist: 404
            return self.metadata_dir / f"{md.signed.version}.{name}"
        return self.metadata_dir / name

    def releases(self) -> list[ReleaseInfo]:
        """Every release in the current targets metadata, oldest first by path order."""
        md = self.targets()
        if md is None:
            return []
        groups: dict[tuple[str, str], ReleaseInfo] = {}
        for path, tf in sorted(md.signed.targets.items()):
            name, version, file = split_target_path(path)
            custom = tf.custom or {}
            info = groups.get((name, version))
            if info is None:
                info = ReleaseInfo(
                    name=name,
                    version=version,
                    device_classes=list(custom.get("device_classes", ["*"])),
                    files={},
                    created=str(custom.get("created", "")),
                )
                groups[(name, version)] = info
            info.files[file] = {"length": tf.length, "sha256": tf.hashes.get("sha256", ""), "path": path}
        return list(groups.values())

    # -- writing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One writer at a time across threads (timestamp refresh vs upload) and processes
        # (`fleet release --repo` beside a running server): flock locks per open file.
        with self.writer_lock() if self.writer_lock is not None else contextlib.nullcontext():
            fd = os.open(self.repo_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _online_signer(self, role: str) -> Signer:
        if self.online_keys_dir is None or not keymod.has_key(self.online_keys_dir, role):
            raise ConfigError(
                f"the repository has no online {role} key: expected "
                f"{keymod.private_key_path(self.online_keys_dir or Path('ONLINE_KEYS_DIR'), role)}"
            )
        return keymod.load_signer(self.online_keys_dir, role)

    def heal(self) -> list[str]:
        """Remove what a crashed release left (files ``timestamp.json`` does not lead to); fix the copies.

        Returns the removed paths (relative to the repository). Old published versions stay:
        consistent snapshots keep every version a device may still be on.
        """
        with self._locked():
            return self._heal_locked()

    def _heal_locked(self) -> list[str]:
        _, snap, targets = self.published()
        keep = {
            "snapshot": snap.signed.version if snap else 0,
            "targets": targets.signed.version if targets else 0,
        }
        removed: list[Path] = []
        for p in list(self.metadata_dir.iterdir()):
            m = _VERSIONED.fullmatch(p.name)
            stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp")
            if (m and int(m.group(1)) > keep[m.group(2)]) or stale_tmp:
                p.unlink()
                removed.append(p)
        referenced = (
            {target_file_name(path, tf.hashes["sha256"]) for path, tf in targets.signed.targets.items()}
            if targets
            else set()
        )
        if self.targets_dir.is_dir():
            for p in sorted(self.targets_dir.rglob("*"), key=lambda q: len(q.parts), reverse=True):
                if p.is_dir() and not p.is_symlink():
                    if not any(p.iterdir()):
                        p.rmdir()
                elif p.relative_to(self.targets_dir).as_posix() not in referenced:
                    p.unlink()
                    removed.append(p)
        for name, md in (("snapshot.json", snap), ("targets.json", targets)):
            pointer = self.metadata_dir / name
            if md is None:
                if pointer.exists():
                    pointer.unlink()
                    removed.append(pointer)
                continue
            want = (self.metadata_dir / f"{md.signed.version}.{name}").read_bytes()
            if not pointer.exists() or pointer.read_bytes() != want:
                atomic_write_bytes(pointer, want)
        if removed:
            fsync_dir(self.metadata_dir)
            log.warning("removed %d unpublished file(s) left by an interrupted release", len(removed))
        return [p.relative_to(self.repo_dir).as_posix() for p in removed]

    def accept_release(
        self, signed_targets_json: bytes, files: dict[str, bytes], *, check_bundles: bool = True
    ) -> ReleaseInfo:
        """Verify a new targets version and its files, then publish them atomically.

        VerificationError when the metadata is not acceptable, BundleRefusedError when a bundle
        holds key material or would not run on a device (skipped with ``check_bundles=False`` by a
        caller that has just checked the same bytes), ConfigError without the online keys,
        StoreError when a write fails. In every failure case the repository is left as it was.
        """
        with self._locked():
            self._heal_locked()
            added, new = self._verify_release(signed_targets_json, files)
            if check_bundles:
                for (name, version), bundle in _bundles(added, files).items():
                    check_release_files(bundle, name=name, version=version)
            # Every signature is made before the first byte is written: a missing or unreadable
            # online key refuses the release with the repository untouched.
            data = new.to_bytes()
            snap_bytes, snap_version, ts_bytes = self._sign_fresh(new.signed.version)
            writes: list[tuple[Path, bytes]] = [
                *(
                    (self.targets_dir / target_file_name(p, tf.hashes["sha256"]), files[p])
                    for p, tf in added.items()
                ),
                (self.metadata_dir / f"{new.signed.version}.targets.json", data),
                (self.metadata_dir / "targets.json", data),
                (self.metadata_dir / f"{snap_version}.snapshot.json", snap_bytes),
                (self.metadata_dir / "snapshot.json", snap_bytes),
                # The commit point: until timestamp.json is replaced, no client reaches anything above.
                (self.metadata_dir / "timestamp.json", ts_bytes),
            ]
            self._write_all(writes, what="the release")
        log.info("accepted targets v%d adding %s", new.signed.version, sorted(added))
        name, version, _ = split_target_path(next(iter(added)))
        for info in self.releases():
            if (info.name, info.version) == (name, version):
                return info
        raise StoreError("the accepted release is not listed")  # cannot happen: just written

    def _verify_release(
        self, signed_targets_json: bytes, files: dict[str, bytes]
    ) -> tuple[dict[str, TargetFile], Metadata[Targets]]:
        try:
            new = Metadata[Targets].from_bytes(signed_targets_json)
        except Exception as exc:
            raise VerificationError(f"targets metadata does not parse: {exc}") from exc
        if not isinstance(new.signed, Targets):
            raise VerificationError("not targets metadata")
        root = self.root()
        try:
            root.verify_delegate(Targets.type, new)
        except UnsignedMetadataError as exc:
            raise VerificationError(f"targets not signed by the root's targets key(s): {exc}") from exc
        if new.signed.is_expired(datetime.now(UTC)):
            raise VerificationError("targets metadata is already expired")
        current = self.targets()
        old_targets: dict[str, TargetFile] = dict(current.signed.targets) if current else {}
        if current is not None and new.signed.version <= current.signed.version:
            raise VerificationError(
                f"targets version {new.signed.version} is not newer than {current.signed.version}"
            )
        added: dict[str, TargetFile] = {}
        for path, tf in new.signed.targets.items():
            split_target_path(path)
            if "sha256" not in tf.hashes:
                raise VerificationError(f"{path} has no sha256")
            old = old_targets.get(path)
            if old is not None:
                if old != tf:
                    raise VerificationError(f"{path} is already released with different content")
                continue
            added[path] = tf
        for path in old_targets:
            if path not in new.signed.targets:
                raise VerificationError(f"the new targets drop the released {path}")
        for path in files:
            if path not in added:
                raise VerificationError(f"uploaded file {path} is not a new target in the signed metadata")
        for path, tf in added.items():
            data = files.get(path)
            if data is None:
                raise VerificationError(f"no file uploaded for the new target {path}")
            if len(data) != tf.length or _sha256(data) != tf.hashes["sha256"]:
                raise VerificationError(f"{path}: length or sha256 differs from the signed metadata")
        if not added:
            raise VerificationError("the release adds no targets")
        return added, new

    def _sign_fresh(self, targets_version: int) -> tuple[bytes, int, bytes]:
        """A new snapshot naming ``targets_version`` and a new timestamp naming it, both signed."""
        snap_signer, ts_signer = self._online_signer("snapshot"), self._online_signer("timestamp")
        _, old_snap, _ = self.published()
        version = old_snap.signed.version + 1 if old_snap else 1
        snap = Metadata(
            Snapshot(
                version=version,
                expires=keymod.expiry(self.expiry_days["snapshot"]),
                meta={"targets.json": MetaFile(version=targets_version)},
            )
        )
        snap.sign(snap_signer)
        return snap.to_bytes(), version, self._timestamp_bytes(version, ts_signer)

    def _timestamp_bytes(self, snapshot_version: int, signer: Signer) -> bytes:
        old = self.timestamp()
        ts = Metadata(
            Timestamp(
                version=old.signed.version + 1 if old else 1,
                expires=keymod.expiry(self.expiry_days["timestamp"]),
                snapshot_meta=MetaFile(version=snapshot_version),
                # Signed: the devices' clock floor (edge_agent.trust), never their own clock.
                unrecognized_fields=issued_fields(),
            )
        )
        ts.sign(signer)
        return ts.to_bytes()

    def _write_all(self, writes: list[tuple[Path, bytes]], *, what: str) -> None:
        """Write in order; on any error put the repository back as it was and raise StoreError."""
        undo = self._undo_point()
        try:
            for path, data in writes:
                atomic_write_bytes(path, data)
        except OSError as exc:
            # Disk full (or any write error) part way: put the repository back as it was, so
            # nothing half-written is ever served and the upload can simply be retried.
            self._undo(undo)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise StoreError(
                ("disk full" if full else "write failed") + f" while storing {what}: {exc.strerror or exc}"
            ) from exc
        except Exception:
            self._undo(undo)
            raise

    _POINTERS = ("targets.json", "snapshot.json", "timestamp.json")

    def _undo_point(self) -> tuple[set[Path], dict[str, bytes | None]]:
        existing = {p for d in (self.metadata_dir, self.targets_dir) if d.is_dir() for p in d.rglob("*")}
        pointers: dict[str, bytes | None] = {}
        for name in self._POINTERS:
            try:
                pointers[name] = (self.metadata_dir / name).read_bytes()
            except FileNotFoundError:
                pointers[name] = None
        return existing, pointers

    def _undo(self, point: tuple[set[Path], dict[str, bytes | None]]) -> None:
        existing, pointers = point
        for d in (self.metadata_dir, self.targets_dir):
            # Deepest first, so directories this attempt created are empty when they go.
            for p in sorted(d.rglob("*") if d.is_dir() else (), key=lambda q: len(q.parts), reverse=True):
                if p in existing or (p.parent == self.metadata_dir and p.name in self._POINTERS):
                    continue
                with contextlib.suppress(OSError):
                    p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        for name, old in pointers.items():
            path = self.metadata_dir / name
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                elif not path.exists() or path.read_bytes() != old:
                    atomic_write_bytes(path, old)
            except OSError:
                log.exception("cannot restore %s after a failed release", path)

    def _publish_snapshot(self, targets_version: int) -> None:
        """Publish ``{targets_version}.targets.json`` (already written) with a new snapshot and timestamp.

        For tests that hand-craft targets metadata; releases go through :meth:`accept_release`.
        """
        with self._locked():
            snap_bytes, snap_version, ts_bytes = self._sign_fresh(targets_version)
            self._write_all(
                [
                    (self.metadata_dir / f"{snap_version}.snapshot.json", snap_bytes),
                    (self.metadata_dir / "snapshot.json", snap_bytes),
                    (self.metadata_dir / "timestamp.json", ts_bytes),
                ],
                what="fresh metadata",
            )

    def refresh_timestamp(self, *, if_expiring_within_s: float, now: datetime | None = None) -> bool:
        """Re-sign timestamp (and snapshot, when it too is close to expiry) before they expire."""
        now = now or datetime.now(UTC)
        with self._locked():
            ts, snap, targets = self.published()
            if ts is None or snap is None or targets is None:
                return False
            horizon = now + timedelta(seconds=if_expiring_within_s)
            if snap.signed.expires <= horizon:
                snap_bytes, snap_version, ts_bytes = self._sign_fresh(targets.signed.version)
                writes = [
                    (self.metadata_dir / f"{snap_version}.snapshot.json", snap_bytes),
                    (self.metadata_dir / "snapshot.json", snap_bytes),
                    (self.metadata_dir / "timestamp.json", ts_bytes),
                ]
            elif ts.signed.expires <= horizon:
                ts_bytes = self._timestamp_bytes(snap.signed.version, self._online_signer("timestamp"))
                writes = [(self.metadata_dir / "timestamp.json", ts_bytes)]
            else:
                return False
            self._write_all(writes, what="fresh metadata")
            return True


def _bundles(
    added: dict[str, TargetFile], files: dict[str, bytes]
) -> dict[tuple[str, str], dict[str, bytes]]:
    """The uploaded files grouped by release: ``{(NAME, VERSION): {FILE: bytes}}``."""
    out: dict[tuple[str, str], dict[str, bytes]] = {}
    for path in added:
        name, version, file = split_target_path(path)
        out.setdefault((name, version), {})[file] = files[path]
    return out


def release_local(
    bundle_dir: Path, keys_dir: Path, repo_dir: Path, *, allow_downgrade: bool = False
) -> ReleaseInfo:
    """``fleet release BUNDLE --keys DIR --repo DIR``: sign and publish into a local repository."""
    repo = Repository.open_or_create(repo_dir, keys_dir)
    signed, files = build_release_targets(
        bundle_dir,
        targets_signer=keymod.load_signer(keys_dir, "targets"),
        current=repo.targets(),
        expiry_days=keymod.load_expiry_days(keys_dir)["targets"],
        allow_downgrade=allow_downgrade,
    )
    # build_release_targets has just checked these very bytes.
    return repo.accept_release(signed, files, check_bundles=False)
