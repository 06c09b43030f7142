"""``fleet export``: a self-contained signed repository holding one release, for a USB stick.

The export carries the published metadata (every root version, the published targets, snapshot
and timestamp) and that release's target files, so ``edge-agent install DIR`` verifies it exactly
as it verifies the network. The targets role is signed offline, so it cannot be cut down here.

Air-gapped lines: the served timestamp lives a day (it is re-signed by the server), so a stick
written from it stops verifying a day later. With ``expires`` the export's snapshot and timestamp
are re-signed (next versions, that lifetime) with the online keys; the repository itself is not
changed. An export expires when the first of its metadata does; :class:`Export` says when and
which role decides it (the offline-signed targets may expire before the requested time).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

from edge_agent.trust import issued_fields
from fleet_server import keys as keymod
from fleet_server.tuf_repo import METADATA_DIR, TARGETS_DIR, Repository, target_file_name
from lineside_common.atomic import replace_dir_durably
from lineside_common.errors import ConfigError, StoreError


@dataclass(frozen=True)
class Export:
    """Where an export was written and when a device stops accepting it."""

    path: Path
    expires: datetime
    expires_role: str  # the metadata role whose expiry is the export's

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "expires": self.expires.isoformat(),
            "expires_role": self.expires_role,
        }


def export_release(
    repo: Repository,
    name: str,
    version: str,
    out_dir: Path,
    *,
    expires: timedelta | None = None,
    now: datetime | None = None,
) -> Export:
    """Write NAME@VERSION to ``out_dir`` (absent or empty) atomically; with ``expires``, re-sign.

    ConfigError when the release is unknown, ``out_dir`` is not empty, ``expires`` is given and
    the repository has no online keys (say where they are expected), or the export would already
    be expired (a stick that every device refuses is worse than this error).
    """
    now = now or datetime.now(UTC)
    info = next((r for r in repo.releases() if (r.name, r.version) == (name, version)), None)
    if info is None:
        raise ConfigError(f"{name}@{version} is not in the repository")
    ts, snap, targets = repo.published()
    if ts is None or snap is None or targets is None:
        raise StoreError("the repository has no published metadata yet")
    metadata: dict[str, bytes] = {
        f"{targets.signed.version}.targets.json": (
            repo.metadata_dir / f"{targets.signed.version}.targets.json"
        ).read_bytes(),
        f"{snap.signed.version}.snapshot.json": (
            repo.metadata_dir / f"{snap.signed.version}.snapshot.json"
        ).read_bytes(),
        "timestamp.json": (repo.metadata_dir / "timestamp.json").read_bytes(),
    }
    if expires is not None:
        metadata, ts, snap = _resigned(repo, metadata, ts, snap, now + expires)
    root = repo.root()
    candidates = [("timestamp", ts.signed.expires), ("snapshot", snap.signed.expires)]
    candidates += [("targets", targets.signed.expires), ("root", root.signed.expires)]
    role, when = min(candidates, key=lambda c: c[1])
    if when <= now:
        hint = (
            "re-release or rotate it"
            if role in ("targets", "root")
            else "pass --expires DURATION --keys DIR to re-sign it"
        )
        raise ConfigError(
            f"the export would already be expired: its {role} metadata expired {when:%Y-%m-%d %H:%M} UTC; {hint}"
        )

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        md = tmp / METADATA_DIR
        md.mkdir()
        for p in repo.metadata_dir.glob("*.root.json"):
            shutil.copy2(p, md / p.name)
        shutil.copy2(repo.metadata_dir / "root.json", md / "root.json")
        for fname, data in metadata.items():
            (md / fname).write_bytes(data)
        for f in info.files.values():
            rel = target_file_name(f["path"], f["sha256"])
            dest = tmp / TARGETS_DIR / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo.targets_dir / rel, dest)
        (tmp / "release.json").write_text(
            json.dumps({**info.to_dict(), "expires": when.isoformat(), "expires_role": role}, indent=2)
        )
        replace_dir_durably(tmp, out_dir)  # an existing out_dir is empty (checked above)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(path=out_dir, expires=when, expires_role=role)


def _resigned(
    repo: Repository,
    metadata: dict[str, bytes],
    ts: Metadata[Timestamp],
    snap: Metadata[Snapshot],
    until: datetime,
) -> tuple[dict[str, bytes], Metadata[Timestamp], Metadata[Snapshot]]:
    """The export's snapshot and timestamp re-signed to expire at ``until`` (next versions)."""
    if repo.online_keys_dir is None or not all(
        keymod.has_key(repo.online_keys_dir, r) for r in keymod.ONLINE_ROLES
    ):
        where = repo.online_keys_dir or Path("KEYS_DIR")
        raise ConfigError(
            "--expires re-signs the export's snapshot and timestamp: it needs the online keys "
            f"({keymod.private_key_path(where, 'snapshot')} and {keymod.private_key_path(where, 'timestamp')}); "
            "pass --keys DIR"
        )
    until = until.replace(microsecond=0)
    new_snap = Metadata(Snapshot(version=snap.signed.version + 1, expires=until, meta=dict(snap.signed.meta)))
    new_snap.sign(keymod.load_signer(repo.online_keys_dir, "snapshot"))
    new_ts = Metadata(
        Timestamp(
            version=ts.signed.version + 1,
            expires=until,
            snapshot_meta=MetaFile(version=new_snap.signed.version),
            # Signed: the devices' clock floor (edge_agent.trust), never their own clock.
            unrecognized_fields=issued_fields(),
        )
    )
    new_ts.sign(keymod.load_signer(repo.online_keys_dir, "timestamp"))
    out = {k: v for k, v in metadata.items() if not k.endswith(".snapshot.json") and k != "timestamp.json"}
    out[f"{new_snap.signed.version}.snapshot.json"] = new_snap.to_bytes()
    out["timestamp.json"] = new_ts.to_bytes()
    return out, new_ts, new_snap
