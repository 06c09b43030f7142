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

``root.consistent_snapshot`` is true, so a device that downloads while a release is being
written never sees a mix: every file it fetches is named by version or hash, and
``timestamp.json`` is replaced last. HTTP (fleet server): ``GET /tuf/metadata/{file}`` and
``GET /tuf/targets/{path}`` straight from REPO; devices use ``metadata_base_url =
{server}/tuf/metadata/`` and ``target_base_url = {server}/tuf/targets/``.

Targets paths are ``NAME/VERSION/FILE``; each target's ``custom`` carries the manifest's
``name``, ``version``, ``device_classes`` (and optionally ``allow_downgrade``). Released paths are
immutable: a new targets version may add targets but never change or drop a released one.

Keys: the targets role is signed offline (``fleet release``); the server holds only the online
snapshot and timestamp keys (``online_keys_dir``, a keys directory with just those two private
keys), so a stolen server cannot make a device install anything.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from edge_agent.acceptance import split_target_path
from edge_agent.atomic import atomic_write_bytes, fsync_dir
from edge_agent.errors import ConfigError, StoreError, VerificationError
from edge_agent.manifest import MANIFEST_FILE, load_manifest
from edge_agent.trust import issued_fields
from fleet_server import keys as keymod

log = logging.getLogger(__name__)

METADATA_DIR = "metadata"
TARGETS_DIR = "targets"


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


def build_release_targets(
    bundle_dir: Path,
    *,
    targets_signer: Signer,
    current: Metadata[Targets] | None,
    expiry_days: float,
    allow_downgrade: bool = False,
) -> tuple[bytes, dict[str, bytes]]:
    """Sign a new targets version that adds ``bundle_dir``'s files (offline step of a release).

    Returns the signed targets metadata bytes and ``{NAME/VERSION/FILE: bytes}``.
    """
    manifest = load_manifest(bundle_dir)
    files: dict[str, bytes] = {}
    for p in sorted(Path(bundle_dir).iterdir()):
        if p.is_file() and not p.name.startswith("."):
            path = f"{manifest.name}/{manifest.version}/{p.name}"
            split_target_path(path)
            files[path] = p.read_bytes()
    if MANIFEST_FILE not in {p.rsplit("/", 1)[1] for p in files}:
        raise ConfigError(f"{bundle_dir} has no {MANIFEST_FILE}")
    if current is None:
        signed = Targets(version=1, expires=keymod.expiry(expiry_days))
    else:
        signed = Targets.from_dict(current.signed.to_dict())
        signed.version = current.signed.version + 1
        signed.expires = keymod.expiry(expiry_days)
    custom: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "device_classes": list(manifest.device_classes),
        "created": manifest.created.isoformat(),
    }
    if allow_downgrade:
        custom["allow_downgrade"] = True
    for path, data in files.items():
        if path in signed.targets:
            old = signed.targets[path]
            if old.hashes.get("sha256") != _sha256(data):
                raise ConfigError(f"{path} is already released with different content; bump the version")
        tf = TargetFile.from_data(path, data, ["sha256"])
        tf.unrecognized_fields["custom"] = dict(custom)
        signed.targets[path] = tf
    md = Metadata(signed)
    md.sign(targets_signer)
    return md.to_bytes(), files


class Repository:
    """A TUF repository directory plus the online keys that keep it fresh. No HTTP in here."""

    def __init__(self, repo_dir: Path, online_keys_dir: Path | None) -> None:
        self.repo_dir = Path(repo_dir)
        self.metadata_dir = self.repo_dir / METADATA_DIR
        self.targets_dir = self.repo_dir / TARGETS_DIR
        self.online_keys_dir = Path(online_keys_dir) if online_keys_dir else None
        self.expiry_days = keymod.load_expiry_days(self.online_keys_dir)
        if not (self.metadata_dir / "root.json").exists():
            raise StoreError(f"{self.repo_dir} is not a TUF repository (no metadata/root.json)")

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(cls, repo_dir: Path, root_json: bytes, online_keys_dir: Path | None) -> Repository:
        """Start a repository from a signed root.json (from ``fleet keys init``)."""
        root = Metadata[Root].from_bytes(root_json)
        root.verify_delegate(Root.type, root)  # self-signed, or it is not a root
        md_dir = Path(repo_dir) / METADATA_DIR
        md_dir.mkdir(parents=True, exist_ok=True)
        (Path(repo_dir) / TARGETS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(md_dir / f"{root.signed.version}.root.json", root_json)
        atomic_write_bytes(md_dir / "root.json", root_json)
        return cls(repo_dir, online_keys_dir)

    @classmethod
    def open(cls, repo_dir: Path, online_keys_dir: Path | None) -> Repository:
        return cls(repo_dir, online_keys_dir)

    @classmethod
    def open_or_create(cls, repo_dir: Path, keys_dir: Path) -> Repository:
        """``fleet release --repo``: the keys directory holds root.json and the online keys too."""
        if (Path(repo_dir) / METADATA_DIR / "root.json").exists():
            return cls(repo_dir, keys_dir)
        return cls.create(repo_dir, (Path(keys_dir) / keymod.ROOT_FILE).read_bytes(), keys_dir)

    # -- reading ---------------------------------------------------------------------------------

    def root(self) -> Metadata[Root]:
        return Metadata[Root].from_bytes((self.metadata_dir / "root.json").read_bytes())

    def _load(self, name: str) -> Metadata[Any] | None:
        path = self.metadata_dir / name
        if not path.exists():
            return None
        return Metadata.from_bytes(path.read_bytes())

    def targets(self) -> Metadata[Targets] | None:
        return self._load("targets.json")

    def snapshot(self) -> Metadata[Snapshot] | None:
        return self._load("snapshot.json")

    def timestamp(self) -> Metadata[Timestamp] | None:
        return self._load("timestamp.json")

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

    def _online_signer(self, role: str) -> Signer:
        if self.online_keys_dir is None or not keymod.has_key(self.online_keys_dir, role):
            raise ConfigError(f"the repository has no online {role} key (online_keys_dir)")
        return keymod.load_signer(self.online_keys_dir, role)

    def accept_release(self, signed_targets_json: bytes, files: dict[str, bytes]) -> ReleaseInfo:
        """Verify a new targets version and its files, then publish them. VerificationError if not.

        Order of writes (a crash anywhere leaves the served state consistent): target files,
        then ``{N}.targets.json``, then ``{M}.snapshot.json``, then ``timestamp.json``.
        """
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

        undo = self._undo_point()
        try:
            for path, tf in added.items():
                atomic_write_bytes(
                    self.targets_dir / target_file_name(path, tf.hashes["sha256"]), files[path]
                )
            data = new.to_bytes()
            atomic_write_bytes(self.metadata_dir / f"{new.signed.version}.targets.json", data)
            atomic_write_bytes(self.metadata_dir / "targets.json", data)
            self._publish_snapshot(new.signed.version, data)
        except OSError as exc:
            # Disk full (or any write error) part way: put the repository back as it was, so
            # nothing half-written is ever served and the upload can simply be retried.
            self._undo(undo)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise StoreError(
                ("disk full" if full else "write failed")
                + f" while storing the release: {exc.strerror or exc}"
            ) from exc
        log.info("accepted targets v%d adding %s", new.signed.version, sorted(added))
        name, version, _ = split_target_path(next(iter(added)))
        for info in self.releases():
            if (info.name, info.version) == (name, version):
                return info
        raise StoreError("the accepted release is not listed")  # cannot happen: just written

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

    def _publish_snapshot(self, targets_version: int, targets_bytes: bytes | None = None) -> None:
        old = self.snapshot()
        version = old.signed.version + 1 if old else 1
        meta = {"targets.json": MetaFile(version=targets_version)}
        snap = Metadata(
            Snapshot(version=version, expires=keymod.expiry(self.expiry_days["snapshot"]), meta=meta)
        )
        snap.sign(self._online_signer("snapshot"))
        sdata = snap.to_bytes()
        atomic_write_bytes(self.metadata_dir / f"{version}.snapshot.json", sdata)
        atomic_write_bytes(self.metadata_dir / "snapshot.json", sdata)
        self._publish_timestamp(version)

    def _publish_timestamp(self, snapshot_version: int) -> None:
        old = self.timestamp()
        version = old.signed.version + 1 if old else 1
        ts = Metadata(
            Timestamp(
                version=version,
                expires=keymod.expiry(self.expiry_days["timestamp"]),
                snapshot_meta=MetaFile(version=snapshot_version),
                # Signed: the devices' clock floor (edge_agent.trust), never their own clock.
                unrecognized_fields=issued_fields(),
            )
        )
        ts.sign(self._online_signer("timestamp"))
        atomic_write_bytes(self.metadata_dir / "timestamp.json", ts.to_bytes())

    def refresh_timestamp(self, *, if_expiring_within_s: float, now: datetime | None = None) -> bool:
        """Re-sign timestamp (and snapshot, when it too is close to expiry) before they expire."""
        now = now or datetime.now(UTC)
        ts, snap, targets = self.timestamp(), self.snapshot(), self.targets()
        if ts is None or snap is None or targets is None:
            return False
        horizon = now + timedelta(seconds=if_expiring_within_s)
        if snap.signed.expires <= horizon:
            self._publish_snapshot(targets.signed.version)
            return True
        if ts.signed.expires <= horizon:
            self._publish_timestamp(snap.signed.version)
            return True
        return False

    def export(self, name: str, version: str, out_dir: Path) -> Path:
        """A self-contained signed local repository with that release's files (USB side-loading).

        The metadata is the current signed metadata (all of it: the targets role is offline, so
        it cannot be cut down here); only the release's target files are copied.
        """
        info = next((r for r in self.releases() if (r.name, r.version) == (name, version)), None)
        if info is None:
            raise ConfigError(f"{name}@{version} is not in the repository")
        ts, snap, targets = self.timestamp(), self.snapshot(), self.targets()
        if ts is None or snap is None or targets is None:
            raise StoreError("the repository has no published metadata yet")
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ConfigError(f"{out_dir} exists and is not empty")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            md = tmp / METADATA_DIR
            md.mkdir()
            for p in self.metadata_dir.glob("*.root.json"):
                shutil.copy2(p, md / p.name)
            shutil.copy2(self.metadata_dir / "root.json", md / "root.json")
            for name_ in (
                f"{targets.signed.version}.targets.json",
                f"{snap.signed.version}.snapshot.json",
                "timestamp.json",
            ):
                shutil.copy2(self.metadata_dir / name_, md / name_)
            for f in info.files.values():
                rel = target_file_name(f["path"], f["sha256"])
                dest = tmp / TARGETS_DIR / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.targets_dir / rel, dest)
            (tmp / "release.json").write_text(json.dumps(info.to_dict(), indent=2))
            for p in tmp.rglob("*"):
                if p.is_file():
                    with p.open("rb") as fh:
                        os.fsync(fh.fileno())
            if out_dir.exists():
                out_dir.rmdir()
            tmp.rename(out_dir)
            fsync_dir(out_dir.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out_dir


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
    return repo.accept_release(signed, files)
