"""Never write in place: every durable file goes through here.

A temp file in the same directory (its mode set before a byte is written, so a
secret is never readable by others), fsync, ``os.replace``, fsync the
directory. A crash at any instant leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path | str) -> None:
    """fsync a directory so a rename, a new entry or an unlink in it survives power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: Path | str, data: bytes, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the parent directory is created.

    ``owner`` is ``(uid, gid)`` for the new file, set (like ``mode``) on the temp file before a
    byte is written; changing the user needs root, and a failure (``PermissionError``) leaves
    ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if owner is not None:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != owner:
                os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def is_disk_full(exc: OSError) -> bool:
    """True when ``exc`` says the file system is out of space or the user out of quota."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_file(path: Path | str) -> None:
    """fsync one file already written (by a library that does not) so its bytes survive power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path | str) -> None:
    """fsync every regular file directly in ``directory`` (symlinks are skipped), then the directory.

    For files written in place by another library (TUF metadata) or into a fresh directory that is
    renamed into place as a whole (a staged bundle): after this, all of it survives power loss.
    """
    directory = Path(directory)
    for p in directory.iterdir():
        if p.is_file() and not p.is_symlink():
            fsync_file(p)
    fsync_dir(directory)
