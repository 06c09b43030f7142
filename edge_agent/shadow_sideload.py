"""``edge-agent install DIR --shadow``: a side-loaded candidate that runs in shadow in the daemon.

The CLI is another process than the daemon, so the hand-over goes through the store's
directory, like a CLI install does:

1. the CLI verifies the release exactly like an install (TUF from the provisioned root,
   manifest, device checks, self-test on this device), then moves the verified files to
   ``<store>/shadow/candidate/`` and writes ``<store>/shadow/request.json`` (atomically) naming
   the release and each file's length and SHA-256;
2. the daemon notices a new request once per telemetry window, re-hashes the files against it
   (a file changed at rest is refused, never run), loads it and runs it in shadow;
3. ``edge-agent install --shadow-stop`` deletes both; the daemon stops the shadow.

The request survives a restart of the daemon (the shadow starts again), unlike a shadow sent
by a rollout, which lives in ``staging/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from edge_agent.manifest import MANIFEST_FILE, parse_manifest
from lineside_common.atomic import atomic_write_bytes, fsync_dir, replace_dir_durably
from lineside_common.errors import ShadowCandidateError

log = logging.getLogger(__name__)

SHADOW_DIR = "shadow"
REQUEST_FILE = "request.json"
CANDIDATE_DIR = "candidate"


def shadow_paths(store_root: Path) -> tuple[Path, Path, Path]:
    """(``shadow/``, ``shadow/candidate/``, ``shadow/request.json``) under the store."""
    base = Path(store_root) / SHADOW_DIR
    return base, base / CANDIDATE_DIR, base / REQUEST_FILE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish_request(
    store_root: Path, staged: Path, name: str, version: str, files: dict[str, Any]
) -> dict[str, Any]:
    """Move a verified staging directory to ``shadow/candidate`` and write the request (CLI side)."""
    base, cand, req = shadow_paths(store_root)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    req.unlink(missing_ok=True)  # the daemon must never read a request for half-moved files
    replace_dir_durably(staged, cand)
    manifest_sha = hashlib.sha256((cand / MANIFEST_FILE).read_bytes()).hexdigest()
    request = {"name": name, "version": version, "sha256": manifest_sha, "files": files}
    atomic_write_bytes(req, json.dumps(request, sort_keys=True).encode(), mode=0o600)
    return request


def withdraw_request(store_root: Path) -> bool:
    """Delete the request and its files (CLI side); True if there was one."""
    base, cand, req = shadow_paths(store_root)
    had = req.exists()
    req.unlink(missing_ok=True)
    shutil.rmtree(cand, ignore_errors=True)
    with contextlib.suppress(OSError):
        fsync_dir(base)
    return had


def read_request(store_root: Path) -> dict[str, Any] | None:
    """The current request after re-checking every file's length and hash; None if there is none.

    Raises ShadowCandidateError naming the file that does not match (the files are then not run).
    """
    _, cand, req = shadow_paths(store_root)
    try:
        request: dict[str, Any] = json.loads(req.read_bytes())
    except FileNotFoundError:
        return None
    for file, (length, sha) in request["files"].items():
        path = cand / file
        if not path.is_file() or path.stat().st_size != int(length) or _sha256(path) != sha:
            raise ShadowCandidateError(
                f"shadow candidate file {file} does not match what was verified", file=file
            )
    parse_manifest((cand / MANIFEST_FILE).read_bytes())
    return request
