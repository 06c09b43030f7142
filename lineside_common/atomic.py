"""Never write in place: every durable file goes through here.

A temp file in the same directory (its mode set before a byte is written, so a
secret is never readable by others), fsync, ``os.replace``, fsync the
directory. A crash at any instant leaves the old file or the new one. A
directory (a bundle, a recording, an export) is built beside its place and
published whole with ``replace_dir_durably``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


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
    with atomic_open(path, mode=mode, owner=owner) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_open(
    path: Path | str, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` atomically and durably when the block ends.

    For writers that stream (``np.savez``, a large export): the temp file beside ``path`` gets
    ``mode`` (and ``owner``, see :func:`atomic_write_bytes`) before a byte is written; when the
    block ends it is fsynced and renamed over ``path``, and the directory is fsynced. If the block
    raises, the temp file is removed and ``path`` is untouched.
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
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str, *, mode: int = 0o644, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` for text."""
    atomic_write_bytes(path, text.encode(encoding), mode=mode)


def atomic_write_json(
    path: Path | str,
    obj: Any,
    *,
    mode: int = 0o644,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``obj`` as JSON (and a final newline) atomically; the ``json.dumps`` options apply."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    atomic_write_text(path, text, mode=mode)


def fsync_tree(root: Path | str) -> None:
    """fsync every file and directory below ``root`` and ``root`` itself, deepest first."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):  # a link's target is not ours; the link is in its directory
                fsync_file(full)
        fsync_dir(dirpath)


def is_disk_full(exc: OSError) -> bool:
    """True when ``exc`` says the file system is out of space or the user out of quota (by errno only)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_file(path: Path | str) -> None:
    """fsync a file written by someone else (a library, ``write_bytes``) before relying on it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir_durably(staged: Path | str, target: Path | str) -> None:
    """Put the fully written directory ``staged`` at ``target`` (same file system), durably.

    Everything in ``staged`` is fsynced first, so after a crash ``target`` is either absent,
    complete, or (when it existed) the old one. An existing ``target`` (empty or not: rename
    cannot replace a non-empty directory) is moved aside into a temp directory beside it,
    ``staged`` is renamed into place, the parent is fsynced, and then the old one is deleted.
    """
    staged, target = Path(staged), Path(target)
    fsync_tree(staged)
    if not target.exists():
        os.replace(staged, target)
        fsync_dir(target.parent)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    try:
        os.replace(target, aside / target.name)
    except BaseException:
        aside.rmdir()
        raise
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(aside / target.name, target)  # the old one back where it was
        aside.rmdir()
        raise
    fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)
