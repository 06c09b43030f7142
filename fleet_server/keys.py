"""Offline and online TUF keys for a Lineside repository (Ed25519, via securesystemslib).

A keys directory (``fleet keys init --out DIR``)::

    DIR/root.json          the first signed root: every device's trust anchor (provision it)
    DIR/keys.json          public facts: key ids per role, metadata expiry per role (days)
    DIR/private/ROLE.pem   PKCS#8 private keys, mode 0600, for root, targets, snapshot, timestamp

Root and targets are the offline keys (keep them off the server); snapshot and timestamp are the
online keys the fleet server holds so it can keep metadata fresh. Private key bytes are never
logged or printed.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from lineside_common.atomic import atomic_write_bytes
from lineside_common.errors import ConfigError

log = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("snapshot", "timestamp")
DEFAULT_EXPIRY_DAYS: dict[str, float] = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
ROOT_FILE = "root.json"
KEYS_FILE = "keys.json"
PRIVATE_DIR = "private"


def parse_expiry_days(text: str | None) -> dict[str, float]:
    """``"root=365,targets=90"`` → the defaults overridden by those values."""
    out = dict(DEFAULT_EXPIRY_DAYS)
    if not text:
        return out
    for part in text.split(","):
        role, sep, value = part.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise ConfigError(f"--expiry-days: {part!r} is not ROLE=DAYS with ROLE in {ROLES}")
        try:
            days = float(value)
        except ValueError as exc:
            raise ConfigError(f"--expiry-days: {value!r} is not a number") from exc
        if days <= 0:
            raise ConfigError(f"--expiry-days: {role} must be positive")
        out[role] = days
    return out


def expiry(days: float, now: datetime | None = None) -> datetime:
    """An expiry ``days`` from now, whole seconds, UTC (TUF's format has no fractions)."""
    base = now or datetime.now(UTC)
    return (base + timedelta(days=days)).replace(microsecond=0)


def _write_private(path: Path, pem: bytes) -> None:
    # Create 0600 from the start (no window where the key is world-readable), then rename.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(path, pem, mode=0o600)


def init_keys(out_dir: Path, expiry_days: dict[str, float] | None = None) -> Path:
    """Create the four Ed25519 keys and root.json v1 in ``out_dir``; return root.json's path.

    Refuses to overwrite an existing keys directory (that would orphan every device).
    """
    days = dict(DEFAULT_EXPIRY_DAYS, **(expiry_days or {}))
    out_dir = Path(out_dir)
    if (out_dir / ROOT_FILE).exists() or (out_dir / PRIVATE_DIR).exists():
        raise ConfigError(f"{out_dir} already holds keys; refusing to overwrite them")
    out_dir.mkdir(parents=True, exist_ok=True)
    signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    root = Root(expires=expiry(days["root"]), consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    md = Metadata(root)
    md.sign(signers["root"])
    for role, signer in signers.items():
        _write_private(out_dir / PRIVATE_DIR / f"{role}.pem", signer.private_bytes)
    facts = {"keyids": {r: s.public_key.keyid for r, s in signers.items()}, "expiry_days": days}
    atomic_write_bytes(out_dir / KEYS_FILE, json.dumps(facts, indent=2).encode())
    atomic_write_bytes(out_dir / ROOT_FILE, md.to_bytes())
    log.info("created TUF keys in %s (key ids %s)", out_dir, facts["keyids"])
    return out_dir / ROOT_FILE


def private_key_path(keys_dir: Path, role: str) -> Path:
    """Where ``role``'s private key lives in a keys directory: ``DIR/private/ROLE.pem``."""
    return Path(keys_dir) / PRIVATE_DIR / f"{role}.pem"


def has_key(keys_dir: Path, role: str) -> bool:
    return private_key_path(keys_dir, role).exists()


def load_signer(keys_dir: Path, role: str) -> CryptoSigner:
    """The private key of ``role`` from a keys directory; ConfigError if absent or unreadable."""
    path = Path(keys_dir) / PRIVATE_DIR / f"{role}.pem"
    try:
        pem = path.read_bytes()
        key = load_pem_private_key(pem, None)
    except FileNotFoundError as exc:
        raise ConfigError(f"no {role} key in {keys_dir}") from exc
    except (OSError, ValueError) as exc:
        # Never include the key bytes in the message.
        raise ConfigError(f"cannot load the {role} key from {path}") from exc
    return CryptoSigner(key)


def load_expiry_days(keys_dir: Path | None) -> dict[str, float]:
    """The per-role expiry chosen at ``keys init`` (defaults when absent)."""
    if keys_dir is None:
        return dict(DEFAULT_EXPIRY_DAYS)
    path = Path(keys_dir) / KEYS_FILE
    if not path.exists():
        return dict(DEFAULT_EXPIRY_DAYS)
    raw = json.loads(path.read_bytes())
    return dict(DEFAULT_EXPIRY_DAYS, **{k: float(v) for k, v in raw.get("expiry_days", {}).items()})


def load_root(keys_dir: Path) -> Metadata[Root]:
    """The root metadata kept beside the keys."""
    path = Path(keys_dir) / ROOT_FILE
    try:
        return Metadata[Root].from_bytes(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"no {ROOT_FILE} in {keys_dir}: run `fleet keys init` first") from exc


class OnlineKeysError(ConfigError):
    """The fleet server's online keys directory is not usable; ``reason`` is missing, unreadable or wrong."""

    def __init__(self, message: str, *, reason: str, path: Path) -> None:
        super().__init__(message, field="online_keys_dir")
        self.reason = reason
        self.path = path


def online_key_files(keys_dir: Path) -> list[Path]:
    """The files the fleet server reads from its online keys directory."""
    return [Path(keys_dir) / ROOT_FILE, *(private_key_path(keys_dir, r) for r in ONLINE_ROLES)]


def check_online_keys(keys_dir: Path) -> None:
    """Check a server's online keys before it serves: OnlineKeysError naming the first bad file.

    ``root.json`` must parse; ``private/snapshot.pem`` and ``private/timestamp.pem`` must exist, load
    and be the keys root.json names for their roles (a key from another ``keys init`` would sign
    metadata every device rejects).
    """
    keys_dir = Path(keys_dir)
    expected = ", ".join(str(p) for p in online_key_files(keys_dir))
    hint = f"the fleet server reads {expected} (from `fleet keys init --out DIR`)"
    root_path = keys_dir / ROOT_FILE
    try:
        root = Metadata[Root].from_bytes(root_path.read_bytes())
    except FileNotFoundError as exc:
        raise OnlineKeysError(f"missing {root_path}; {hint}", reason="missing", path=root_path) from exc
    except (OSError, ValueError) as exc:
        raise OnlineKeysError(
            f"cannot read {root_path}; {hint}", reason="unreadable", path=root_path
        ) from exc
    for role in ONLINE_ROLES:
        path = private_key_path(keys_dir, role)
        if not path.exists():
            raise OnlineKeysError(f"missing {path}; {hint}", reason="missing", path=path)
        try:
            signer = load_signer(keys_dir, role)
        except ConfigError as exc:
            raise OnlineKeysError(f"cannot read {path}; {hint}", reason="unreadable", path=path) from exc
        if signer.public_key.keyid not in root.signed.roles[role].keyids:
            raise OnlineKeysError(
                f"{path} is not the {role} key {root_path} names (another `fleet keys init`?); {hint}",
                reason="wrong",
                path=path,
            )
