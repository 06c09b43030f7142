"""Pure rules: may this device install this release? No files, sockets or clocks in here.

Checked after TUF has verified the signatures, versions, expiry, lengths and hashes:

1. target paths are ``NAME/VERSION/FILE`` with safe components (nothing escapes the bundle directory);
2. the manifest's name and version equal the signed path's and the signed custom data's;
3. the device class is in the manifest's (and the signed custom data's) ``device_classes``;
4. ``min_agent_version`` is not newer than this agent;
5. downgrade rule: a version lower than the highest accepted for that model is refused unless the
   signed targets custom data carries ``"allow_downgrade": true`` (a deliberate, signed downgrade)
   or the local operator forces it;
6. blocklist: a version that failed probation on this device is never reinstalled automatically
   (the operator may force it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edge_agent.manifest import _NAME, _SEMVER, Manifest, version_key
from lineside_common.errors import IncompatibleModelError, VerificationError

_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def split_target_path(path: str) -> tuple[str, str, str]:
    """``NAME/VERSION/FILE`` → its parts; VerificationError for anything that could escape.

    Rejects absolute paths, ``..``, backslashes, empty or extra components and odd characters:
    the file name is later joined to a directory on the device.
    """
    if "\\" in path or "\x00" in path or path.startswith("/"):
        raise VerificationError(f"unsafe target path {path!r}")
    parts = path.split("/")
    if len(parts) != 3:
        raise VerificationError(f"target path {path!r} is not NAME/VERSION/FILE")
    name, version, file = parts
    if not _NAME.match(name) or name in (".", ".."):
        raise VerificationError(f"unsafe model name in target path {path!r}")
    if not _SEMVER.match(version):
        raise VerificationError(f"bad version in target path {path!r}")
    if not _FILE.match(file) or file in (".", ".."):
        raise VerificationError(f"unsafe file name in target path {path!r}")
    return name, version, file


@dataclass(frozen=True)
class DeviceFacts:
    """What the rules need to know about this device and its history."""

    device_class: str
    agent_version: str
    highest_accepted: Mapping[str, str]
    failed: frozenset[str]  # "name@version" that failed probation here


def check_release(
    manifest: Manifest,
    *,
    signed_name: str,
    signed_version: str,
    signed_custom: Mapping[str, object] | None,
    device: DeviceFacts,
    force: bool = False,
) -> None:
    """Raise IncompatibleModelError (with ``reason``) or VerificationError if the device must refuse it.

    ``reason`` is one of: ``mismatch``, ``device_class``, ``agent_version``, ``downgrade``,
    ``failed_before``.
    """
    if manifest.name != signed_name or manifest.version != signed_version:
        raise VerificationError(
            f"manifest says {manifest.ref} but the signed path says {signed_name}@{signed_version}"
        )
    custom = dict(signed_custom or {})
    if custom.get("name", signed_name) != signed_name or custom.get("version", signed_version) != (
        signed_version
    ):
        raise VerificationError("signed custom data names a different model than its path")
    signed_classes = custom.get("device_classes")
    if signed_classes is not None and (
        not isinstance(signed_classes, list) or sorted(signed_classes) != sorted(manifest.device_classes)
    ):
        raise VerificationError("signed device_classes differ from the manifest's")
    if not manifest.supports_device_class(device.device_class):
        raise IncompatibleModelError(
            f"{manifest.ref} is for device classes {manifest.device_classes}, "
            f"this device is {device.device_class!r}",
            reason="device_class",
        )
    if version_key(manifest.min_agent_version) > version_key(device.agent_version):
        raise IncompatibleModelError(
            f"{manifest.ref} needs agent >= {manifest.min_agent_version}, this agent is {device.agent_version}",
            reason="agent_version",
        )
    if force:
        return
    if manifest.ref in device.failed:
        raise IncompatibleModelError(
            f"{manifest.ref} failed probation on this device before; not reinstalling it",
            reason="failed_before",
        )
    highest = device.highest_accepted.get(manifest.name)
    if (
        highest is not None
        and version_key(manifest.version) < version_key(highest)
        and custom.get("allow_downgrade") is not True
    ):
        raise IncompatibleModelError(
            f"{manifest.ref} is older than {highest}, the highest accepted; "
            "a downgrade needs signed allow_downgrade or --force",
            reason="downgrade",
        )


def release_paths(paths: Iterable[str], name: str, version: str) -> dict[str, str]:
    """The signed targets of one release: ``{FILE: path}`` for every ``name/version/FILE``."""
    out: dict[str, str] = {}
    for path in paths:
        if not path.startswith(f"{name}/{version}/"):
            continue
        _, _, file = split_target_path(path)
        out[file] = path
    return out
