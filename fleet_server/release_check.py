"""What a release must be before it is signed (``fleet release``) or accepted (the server's upload).

Two questions, asked on both sides of an upload so that a server never depends on the client's
honesty and a client never relies on the server to catch its mistakes:

1. *Are these the bundle's own bytes?* :func:`read_bundle_files` reads every entry of a bundle
   directory through ``O_NOFOLLOW`` and ``fstat``: a symlink, a directory, a FIFO, a device or a
   hard link (another name for a file that lives elsewhere, e.g. ``private/targets.pem``) is
   refused, naming the file. :func:`refuse_key_material` refuses any file holding a PEM/OpenSSH
   private key, which catches the same leak on the server, where the upload is only bytes.
2. *Could a device run it?* :func:`check_runnable` loads ``model.onnx`` with the agent's own
   :class:`~edge_agent.runtime.ModelRunner` on the CPU provider (which checks the manifest's input
   and output names against the model and warms it up) and runs the agent's own
   :func:`~edge_agent.selftest.run_selftest`, so the release check and the device agree on what
   "runnable" means. Deliberately faulty releases (:mod:`models.faulty`) pass by construction:
   their ``selftest.npz`` is regenerated from the edited model.

Every refusal is a :class:`BundleRefusedError` with a typed ``reason`` and the ``file`` it names.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from edge_agent.manifest import MANIFEST_FILE, MODEL_FILE, parse_manifest
from lineside_common.errors import LinesideError, ManifestError, UntrustedInputError

# Reasons a bundle is refused (BundleRefusedError.reason).
NOT_REGULAR = "not_regular_file"
HARD_LINK = "hard_link"
KEY_MATERIAL = "key_material"
NO_MANIFEST = "no_manifest"
MANIFEST_INVALID = "manifest_invalid"
WRONG_PATH = "manifest_path_mismatch"
NOT_RUNNABLE = "not_runnable"
SELFTEST_FAILED = "selftest_failed"

_KEY_MARKERS = (b"PRIVATE KEY-----", b"BEGIN OPENSSH PRIVATE KEY")


class BundleRefusedError(UntrustedInputError):
    """A bundle that must not be signed or published; ``reason`` says why, ``file`` names the culprit."""

    def __init__(self, message: str, *, reason: str, file: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.file = file


def read_bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    """``{FILE: bytes}`` for every entry of ``bundle_dir`` (dot-files skipped), or BundleRefusedError.

    Each file is opened without following symlinks and checked on the open descriptor, so what is
    checked is what is read: no window in which a regular file can be swapped for a link.
    """
    bundle_dir = Path(bundle_dir)
    try:
        entries = sorted(os.scandir(bundle_dir), key=lambda e: e.name)
    except OSError as exc:
        raise BundleRefusedError(
            f"cannot read the bundle directory {bundle_dir}: {exc.strerror or exc}", reason=NOT_REGULAR
        ) from exc
    files: dict[str, bytes] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = bundle_dir / entry.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            # ELOOP: the entry is a symlink (O_NOFOLLOW); anything else unreadable is refused too.
            kind = "a symlink" if entry.is_symlink() else f"unreadable ({exc.strerror or exc})"
            raise BundleRefusedError(
                f"{path} is {kind}: a bundle holds regular files only", reason=NOT_REGULAR, file=entry.name
            ) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BundleRefusedError(
                    f"{path} is not a regular file: a bundle holds regular files only",
                    reason=NOT_REGULAR,
                    file=entry.name,
                )
            if st.st_nlink > 1:
                raise BundleRefusedError(
                    f"{path} is a hard link ({st.st_nlink} names): copy the file into the bundle",
                    reason=HARD_LINK,
                    file=entry.name,
                )
            with os.fdopen(fd, "rb", closefd=False) as fh:
                files[entry.name] = fh.read()
        finally:
            os.close(fd)
    return files


def refuse_key_material(files: dict[str, bytes]) -> None:
    """BundleRefusedError if any file holds a private key (a bundle is published to every device)."""
    for name, data in files.items():
        if any(marker in data for marker in _KEY_MARKERS):
            raise BundleRefusedError(
                f"{name} holds a private key: refusing to publish it", reason=KEY_MATERIAL, file=name
            )


def check_runnable(files: dict[str, bytes], *, name: str | None = None, version: str | None = None) -> float:
    """Load the bundle as a device would (CPU provider) and run its self-test; return the max |diff|.

    ``name``/``version``, when given, are what the release is published as; the manifest must say
    the same. BundleRefusedError (reason ``manifest_invalid``, ``not_runnable``, ``selftest_failed``…)
    when a device would refuse the release.
    """
    from edge_agent.config import InferenceConfig
    from edge_agent.runtime import CPU, ModelRunner
    from edge_agent.selftest import run_selftest

    if MANIFEST_FILE not in files:
        raise BundleRefusedError(f"the bundle has no {MANIFEST_FILE}", reason=NO_MANIFEST, file=MANIFEST_FILE)
    try:
        manifest = parse_manifest(files[MANIFEST_FILE])
    except ManifestError as exc:
        raise BundleRefusedError(
            f"{MANIFEST_FILE}: {exc}", reason=MANIFEST_INVALID, file=MANIFEST_FILE
        ) from exc
    if (name, version) != (None, None) and (manifest.name, manifest.version) != (name, version):
        raise BundleRefusedError(
            f"{MANIFEST_FILE} says {manifest.ref}, the release is {name}@{version}",
            reason=WRONG_PATH,
            file=MANIFEST_FILE,
        )
    for needed in (MODEL_FILE, manifest.selftest.file):
        if needed not in files:
            raise BundleRefusedError(f"the bundle has no {needed}", reason=NOT_RUNNABLE, file=needed)
    with tempfile.TemporaryDirectory(prefix="lineside-release-check-") as tmp:
        for fname, data in files.items():
            (Path(tmp) / fname).write_bytes(data)
        try:
            runner = ModelRunner.load(Path(tmp), inference=InferenceConfig(providers=[CPU]))
        except LinesideError as exc:
            raise BundleRefusedError(
                f"no device could run it: {_strip_dir(exc, tmp)}", reason=NOT_RUNNABLE, file=MODEL_FILE
            ) from exc
        try:
            return run_selftest(runner, Path(tmp), manifest)
        except LinesideError as exc:
            raise BundleRefusedError(
                f"the self-test does not reproduce on the CPU provider: {_strip_dir(exc, tmp)}",
                reason=SELFTEST_FAILED,
                file=manifest.selftest.file,
            ) from exc
        finally:
            runner.close()


def check_release_files(
    files: dict[str, bytes], *, name: str | None = None, version: str | None = None
) -> None:
    """Both checks a release's files must pass: no key material, runnable on a device."""
    refuse_key_material(files)
    check_runnable(files, name=name, version=version)


def _strip_dir(exc: Exception, tmp: str) -> str:
    # The temp directory's name means nothing to the operator; the bundle's file names do.
    return str(exc).replace(f"{tmp}/", "").replace(tmp, "the bundle")
