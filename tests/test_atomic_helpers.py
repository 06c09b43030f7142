"""lineside_common.atomic's helpers for files written by others: is_disk_full, fsync_file, fsync_tree."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lineside_common import atomic
from lineside_common.atomic import fsync_file, fsync_tree, is_disk_full


@pytest.mark.parametrize(
    ("code", "full"),
    [(errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EACCES, False), (errno.EIO, False), (None, False)],
)
def test_is_disk_full_reads_the_errno_only(code: int | None, full: bool) -> None:
    exc = OSError(code, "whatever the OS says") if code is not None else OSError("no errno")
    assert is_disk_full(exc) is full
    # The words never decide: a message that says "disk full" with another errno is not full.
    assert is_disk_full(OSError(errno.EIO, "disk full")) is False


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(st_dev, st_ino) of every fsynced descriptor, in order."""
    seen: list[tuple[int, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        seen.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return seen


def _key(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_dev, st.st_ino


def test_fsync_file_fsyncs_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    seen = _record_fsyncs(monkeypatch)
    fsync_file(f)
    assert seen == [_key(f)]


def test_fsync_file_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsync_file(tmp_path / "nope")


def test_fsync_tree_fsyncs_every_regular_file_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "md"
    d.mkdir()
    files = [d / "root.json", d / "targets.json"]
    for f in files:
        f.write_bytes(b"{}")
    (d / "link.json").symlink_to(files[0])  # a link is not a file of its own: skipped
    (d / "sub").mkdir()  # a subdirectory is walked too, deepest first
    (d / "sub" / "deep.json").write_bytes(b"{}")
    seen = _record_fsyncs(monkeypatch)
    fsync_tree(d)
    deep = [_key(d / "sub" / "deep.json"), _key(d / "sub")]
    assert seen[:2] == deep  # the subdirectory's file, then the subdirectory
    assert sorted(seen[2:-1]) == sorted(_key(f) for f in files)
    assert seen[-1] == _key(d)  # the directory last: its entries are durable after the files
