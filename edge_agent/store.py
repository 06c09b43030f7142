"""The model store: immutable verified bundles and the atomic ``state.json`` (I/O shell).

The decisions (what the state becomes) are in :mod:`edge_agent.store_rules`; this module only
carries them out durably: temp file, fsync, ``os.replace``, directory fsync.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from edge_agent.manifest import MANIFEST_FILE
from edge_agent.store_rules import BundleRef, StoreState
from lineside_common.atomic import atomic_write_bytes, fsync_dir, fsync_tree, is_disk_full
from lineside_common.errors import StoreError

# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------

STATE_FILE = "state.json"
BUNDLES_DIR = "bundles"
STAGING_DIR = "staging"
TUF_DIR = "tuf"
LOCK_FILE = "store.lock"
RECORD_FILE = ".record.json"  # per bundle: the signed length + sha256 of every file


def _sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def store_error(exc: OSError, what: str, *, detail: str | None = None) -> StoreError:
    """The StoreError for an OSError while ``what``: reason ``disk_full`` or ``store``.

    ``detail`` replaces the OS's own words in the message (default: its strerror).
    """
    if is_disk_full(exc):
        return StoreError(f"disk full while {what}", reason="disk_full")
    return StoreError(f"{what} failed: {detail if detail is not None else exc.strerror or exc}")


class ModelStore:
    """Verified bundles under ``root/bundles/<manifest-sha256>/`` and the atomic ``state.json``.

    Layout::

        root/state.json                     StoreState (see store_rules), atomic writes only
        root/bundles/<sha256>/              immutable verified bundles (+ .record.json)
        root/staging/<tmp>/                 downloads in progress; removed at start-up
        root/tuf/                           TUF trusted metadata (edge_agent.trust)
        root/store.lock                     flock: one writer at a time (agent or CLI)

    Every install goes: stage (download + verify into ``staging/``, fsync) → rename into
    ``bundles/`` (atomic) → write ``state.json`` (atomic) → swap. :meth:`recover` at start-up undoes
    what a crash left half done: staging directories and unreferenced bundles are deleted, and a
    state that names a missing or corrupt bundle falls back to the other one.
    """

    def __init__(self, root: Path | str, *, reserve_bytes: int = 0) -> None:
        self.root = Path(root)
        self.bundles = self.root / BUNDLES_DIR
        self.staging = self.root / STAGING_DIR
        self.tuf_dir = self.root / TUF_DIR
        self.reserve_bytes = reserve_bytes
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._thread_lock = threading.RLock()
        try:
            for d in (self.root, self.bundles, self.staging, self.tuf_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error(exc, f"creating the store in {self.root}") from exc

    # -- locking -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes (flock) and threads; re-entrant within one thread."""
        with self._thread_lock:
            if self._lock_depth == 0:
                fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    os.close(self._lock_fd)
                    self._lock_fd = None

    # -- state -------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def read_state(self) -> StoreState:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return StoreState()
        except OSError as exc:
            raise store_error(exc, "reading state.json") from exc
        try:
            return StoreState.from_dict(json.loads(raw))
        except json.JSONDecodeError as exc:
            # Only ever written atomically, so this is corruption outside our control.
            raise StoreError(f"state.json is not JSON: {exc}") from exc

    def write_state(self, state: StoreState) -> None:
        try:
            atomic_write_bytes(self.state_path, json.dumps(state.to_dict(), indent=2).encode())
        except OSError as exc:
            raise store_error(exc, "writing state.json") from exc

    def state_mtime_ns(self) -> int:
        try:
            return self.state_path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    # -- bundles -----------------------------------------------------------------------------------

    def bundle_dir(self, ref: BundleRef) -> Path:
        return self.bundles / ref.sha256

    def has_bundle(self, sha256: str) -> bool:
        return (self.bundles / sha256 / RECORD_FILE).exists()

    def new_staging(self) -> Path:
        """A fresh staging directory (removed by :meth:`discard_staging` or at the next start)."""
        try:
            return Path(tempfile.mkdtemp(prefix="stage-", dir=self.staging))
        except OSError as exc:
            raise store_error(exc, "creating a staging directory") from exc

    def discard_staging(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def check_space(self, needed_bytes: int) -> None:
        """StoreError when the store's file system cannot take ``needed_bytes`` plus the reserve."""
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes + self.reserve_bytes:
            raise StoreError(
                f"disk full: {needed_bytes} bytes needed (+{self.reserve_bytes} reserve), {free} free",
                reason="disk_full",
            )

    def commit_staged(self, staged: Path, files: Mapping[str, tuple[int, str]], ref: BundleRef) -> BundleRef:
        """Make a verified staging directory an immutable bundle: record, fsync, atomic rename.

        ``files`` is ``{FILE: (length, sha256)}`` as signed; they are checked once more here.
        """
        try:
            for file, (length, sha) in files.items():
                if _sha256_file(staged / file) != (length, sha):
                    raise StoreError(f"staged {file} differs from what was verified")
            record = {
                "ref": ref.to_dict(),
                "files": {f: {"length": n, "sha256": s} for f, (n, s) in files.items()},
            }
            # Written in place: the whole directory is fresh and becomes visible only by the rename.
            (staged / RECORD_FILE).write_bytes(json.dumps(record, indent=2).encode())
            fsync_tree(staged)
            dest = self.bundle_dir(ref)
            if dest.exists():
                # Same manifest hash already stored (e.g. reinstall): keep the existing one if intact.
                try:
                    self.verify_bundle(ref)
                    self.discard_staging(staged)
                    return ref
                except StoreError:
                    shutil.rmtree(dest)
            os.rename(staged, dest)
            fsync_dir(self.bundles)
            fsync_dir(self.staging)
        except OSError as exc:
            raise store_error(exc, "staging the bundle") from exc
        return ref

    def verify_bundle(self, ref: BundleRef) -> None:
        """Re-check every file of a stored bundle against its record; StoreError if anything differs."""
        d = self.bundle_dir(ref)
        try:
            record = json.loads((d / RECORD_FILE).read_bytes())
            if BundleRef.from_dict(record["ref"]) != ref:
                raise StoreError(f"bundle {ref.sha256[:12]} records a different model")
            names = {p.name for p in d.iterdir() if p.name != RECORD_FILE}
            if names != set(record["files"]):
                raise StoreError(
                    f"bundle {ref.ref} has files {sorted(names)}, recorded {sorted(record['files'])}"
                )
            for file, meta in record["files"].items():
                if _sha256_file(d / file) != (meta["length"], meta["sha256"]):
                    raise StoreError(f"bundle {ref.ref}: {file} does not match its verified hash")
            if _sha256_file(d / MANIFEST_FILE)[1] != ref.sha256:
                raise StoreError(f"bundle {ref.ref}: manifest hash is not its directory name")
        except FileNotFoundError as exc:
            raise StoreError(f"bundle {ref.ref} ({ref.sha256[:12]}) is missing or incomplete") from exc
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"bundle {ref.ref}: record is malformed") from exc

    def gc(self, state: StoreState | None = None) -> list[str]:
        """Delete bundles other than the active and previous ones (call after a commit)."""
        with self.locked():
            keep = (state or self.read_state()).referenced()
            removed = []
            for d in self.bundles.iterdir():
                if d.name not in keep:
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d.name)
            if removed:
                fsync_dir(self.bundles)
            return removed

    # -- start-up ----------------------------------------------------------------------------------

    def recover(self) -> tuple[StoreState, list[str]]:
        """Finish or undo what a crash left half done. Returns the state and what was done.

        - staging directories are deleted (a download never becomes a bundle except by rename);
        - bundles not named by state.json are deleted (renamed, but the state write never came);
        - an active bundle that is missing or fails verification is replaced by the previous one.
        """
        notes: list[str] = []
        with self.locked():
            for p in self.staging.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                notes.append(f"removed unfinished staging {p.name}")
            for p in self.root.glob(f".{STATE_FILE}.*.tmp"):
                p.unlink(missing_ok=True)
                notes.append("removed a half-written state.json")
            state = self.read_state()
            keep = state.referenced()
            for d in self.bundles.iterdir():
                if d.name not in keep:
                    shutil.rmtree(d, ignore_errors=True)
                    notes.append(f"removed unreferenced bundle {d.name[:12]}")
            changed = False
            if state.previous is not None:
                try:
                    self.verify_bundle(state.previous)
                except StoreError as exc:
                    notes.append(f"previous model unusable: {exc}")
                    state = replace(state, previous=None, probation=False, boot_count=0)
                    changed = True
            if state.active is not None:
                try:
                    self.verify_bundle(state.active)
                except StoreError as exc:
                    notes.append(f"active model unusable: {exc}")
                    if state.previous is not None:
                        state = replace(
                            state, active=state.previous, previous=None, probation=False, boot_count=0
                        )
                    else:
                        state = replace(state, active=None, probation=False, boot_count=0)
                    changed = True
            if state.probation and state.previous is None:
                state = replace(state, probation=False, boot_count=0)
                changed = True
            if changed:
                self.write_state(state)
            fsync_dir(self.bundles)
            return state, notes
