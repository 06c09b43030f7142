"""lineside_common.atomic: files and directories replaced whole, with their modes, or not at all."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lineside_common.atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_tree,
    replace_dir_durably,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_bytes_replace_the_old_file_with_the_mode_asked_for(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "key.pem"
    atomic_write_bytes(p, b"old", mode=0o600)
    assert p.read_bytes() == b"old" and _mode(p) == 0o600
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and _mode(p) == 0o644
    assert _leftovers(p.parent) == []


def test_text_and_json(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "ünïcode\n", mode=0o640)
    assert (tmp_path / "a.txt").read_bytes() == "ünïcode\n".encode() and _mode(tmp_path / "a.txt") == 0o640
    obj = {"b": 1, "a": Path("/x")}
    atomic_write_json(tmp_path / "r.json", obj, default=str, sort_keys=True)
    text = (tmp_path / "r.json").read_text()
    assert text == json.dumps(obj, indent=2, default=str, sort_keys=True) + "\n"
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "r.json", {"a": Path("/y")})  # not serialisable: nothing written
    assert (tmp_path / "r.json").read_text() == text and _leftovers(tmp_path) == []


def test_a_stream_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "data.npz"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(p) as f:
        f.write(b"half of the new")
        assert p.read_bytes() == b"old"  # nothing is visible until the block ends
        raise RuntimeError("writer failed")
    assert p.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with atomic_open(p, mode=0o600) as f:
        f.write(b"new, ")
        f.write(b"streamed")
    assert p.read_bytes() == b"new, streamed" and _mode(p) == 0o600


def test_fsync_tree_reaches_every_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t" / "a" / "b").mkdir(parents=True)
    (tmp_path / "t" / "a" / "b" / "f").write_bytes(b"1")
    (tmp_path / "t" / "g").write_bytes(b"2")
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    fsync_tree(tmp_path / "t")
    t = str(tmp_path / "t")
    assert sorted(synced) == sorted([f"{t}/a/b/f", f"{t}/g", f"{t}/a/b", f"{t}/a", t])
    assert synced.index(f"{t}/a/b/f") < synced.index(f"{t}/a/b") < synced.index(f"{t}/a") < synced.index(t)


def _staged(parent: Path, content: str) -> Path:
    d = parent / f".staged-{content}"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "file").write_text(content)
    return d


@pytest.mark.parametrize("existing", ["none", "empty", "full"])
def test_replace_dir_puts_the_staged_tree_in_place(tmp_path: Path, existing: str) -> None:
    target = tmp_path / "out"
    if existing != "none":
        target.mkdir()
    if existing == "full":
        (target / "old-file").write_text("old")
    replace_dir_durably(_staged(tmp_path, "new"), target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["sub", "sub/file"]
    assert (target / "sub" / "file").read_text() == "new"
    assert _leftovers(tmp_path) == []  # neither the staged nor the old directory is left


def test_a_failed_replace_keeps_the_old_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old-file").write_text("old")
    staged = _staged(tmp_path, "new")
    real = os.replace

    def refuse_the_new_one(src: str | Path, dst: str | Path) -> None:
        if Path(src) == staged:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_the_new_one)
    with pytest.raises(OSError):
        replace_dir_durably(staged, target)
    assert [p.name for p in target.iterdir()] == ["old-file"]
    assert _leftovers(tmp_path) == [staged.name]  # the caller still owns (and removes) what it staged
