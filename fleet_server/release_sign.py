"""The offline half of a release: sign a new targets version that adds one bundle (``fleet release``).

Runs where the targets key lives (the release engineer's machine or CI), never on the fleet
server. The bundle's files are read by :func:`~fleet_server.release_check.read_bundle_files`
(regular files only, no links) and checked by
:func:`~fleet_server.release_check.check_release_files` (no key material; runnable as a device
runs it) before anything is signed: what is signed is exactly what was checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets

from edge_agent.acceptance import split_target_path
from edge_agent.manifest import MANIFEST_FILE, parse_manifest
from fleet_server import keys as keymod
from fleet_server.release_check import check_release_files, read_bundle_files
from lineside_common.errors import ConfigError, LinesideError


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AlreadyReleasedError(LinesideError):
    """The bundle is already published, byte for byte (``fleet release`` treats it as done)."""

    reason = "already_released"

    def __init__(self, message: str, *, ref: str) -> None:
        super().__init__(message)
        self.ref = ref


def build_release_targets(
    bundle_dir: Path,
    *,
    targets_signer: Signer,
    current: Metadata[Targets] | None,
    expiry_days: float,
    allow_downgrade: bool = False,
) -> tuple[bytes, dict[str, bytes]]:
    """Sign a new targets version that adds ``bundle_dir``'s files (offline step of a release).

    Returns the signed targets metadata bytes and ``{NAME/VERSION/FILE: bytes}``. The bundle is
    refused (:class:`~fleet_server.release_check.BundleRefusedError`) when it holds anything but
    regular files, holds key material, or would not load and pass its self-test on a device.
    """
    # Regular files only, read without following links: a symlink to private/targets.pem would
    # otherwise be signed and published to every device (SECURITY.md).
    raw = read_bundle_files(Path(bundle_dir))
    if MANIFEST_FILE not in raw:
        raise ConfigError(f"{bundle_dir} has no {MANIFEST_FILE}")
    manifest = parse_manifest(raw[MANIFEST_FILE])
    # What is signed is what was checked: the same bytes, loaded as a device would load them.
    check_release_files(raw, name=manifest.name, version=manifest.version)
    files: dict[str, bytes] = {}
    for fname, data in raw.items():
        path = f"{manifest.name}/{manifest.version}/{fname}"
        split_target_path(path)
        files[path] = data
    if current is not None and all(
        path in current.signed.targets and current.signed.targets[path].hashes.get("sha256") == _sha256(data)
        for path, data in files.items()
    ):
        # A retry of a release that was published (its answer lost): nothing to sign again.
        raise AlreadyReleasedError(
            f"{manifest.ref} is already released with these exact files", ref=manifest.ref
        )
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
