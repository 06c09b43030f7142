"""Power loss: an install's file operations are traced and checked against what survives a power cut.

SIGKILL (tests/test_updates_crash.py) never loses a write the kernel already has, so it cannot
catch a missing fsync or a wrong order. Here a recording seam wraps ``os.open``, ``open``
(builtins and ``io``), ``os.fsync``, ``os.rename`` and ``os.replace`` during one real install
(TUF verification from a local repository, staging, commit, ``state.json``), identifying files by
inode so that a rename does not hide them. The trace is then checked against the POSIX rules a
journaling file system gives after power loss (data is durable only once fsynced; a new name or
rename only once its directory is fsynced):

- every file is fsynced after its last write-open and before it is renamed, or before the
  directory holding it is renamed into place;
- every directory is fsynced before it is renamed (its entries), and the destination's parent
  directory after the rename;
- ``state.json`` naming the new bundle is replaced only after the bundle's rename *and* the fsync
  of ``bundles/`` that makes it durable, and the store directory is fsynced after that replace.

Why a trace and not a simulated power cut that drops unsynced writes: the trace checks every
operation of every file of the real code path in milliseconds, needs no FUSE or root, and a
missing fsync shows as a named rule and file. strace is not needed (and not on every machine).
Scope: the store (bundles, staging, ``state.json``); ngclient's own metadata writes are made
durable after each refresh by edge_agent.trust, outside this trace's rules.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.store import BUNDLES_DIR, STATE_FILE, TUF_DIR, ModelStore
from tests.updates_support import FakeHost, World

Key = tuple[int, int]  # (st_dev, st_ino)


@dataclass
class Trace:
    """File operations in order: ("write", key, path), ("fsync", key, path) and
    ("rename", src, dst, [(path, key, is_regular_file) moved], new state.json content or None)."""

    ops: list[tuple[Any, ...]] = field(default_factory=list)

    def index_of_fsync(self, key: Key, after: int, before: int) -> bool:
        return any(op[0] == "fsync" and op[1] == key for op in self.ops[after + 1 : before])


def _key_fd(fd: int) -> Key:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


@contextmanager
def recording(root: Path) -> Iterator[Trace]:
    """Wrap the file operations; only paths under ``root`` (outside its TUF directory) are kept."""
    trace = Trace()
    root = root.resolve()
    skip = root / TUF_DIR
    real = {
        "os_open": os.open,
        "open": builtins.open,
        "fsync": os.fsync,
        "rename": os.rename,
        "replace": os.replace,
    }

    def ours(path: Any) -> Path | None:
        try:
            p = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return None
        return p if p.is_relative_to(root) and not p.is_relative_to(skip) else None

    def os_open(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        fd = real["os_open"](path, flags, *a, **kw)
        p = ours(path)
        if p is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            trace.ops.append(("write", _key_fd(fd), p))
        return fd

    def py_open(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        f = real["open"](file, mode, *a, **kw)
        p = ours(file) if isinstance(file, (str, bytes, os.PathLike)) else None
        if p is not None and any(c in mode for c in "wax+"):
            trace.ops.append(("write", _key_fd(f.fileno()), p))
        return f

    def fsync(fd: Any) -> None:
        real["fsync"](fd)
        n = fd if isinstance(fd, int) else fd.fileno()
        try:
            p = ours(os.readlink(f"/proc/self/fd/{n}"))
        except OSError:
            p = None
        if p is not None:
            trace.ops.append(("fsync", _key_fd(n), p))

    def mover(name: str) -> Any:
        def move(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
            d = ours(dst)
            content = None
            if d is not None and d.name == STATE_FILE:
                content = json.loads(Path(os.fsdecode(src)).read_bytes())
            real[name](src, dst, *a, **kw)
            if d is not None:
                # What was moved, as it is now (a later rename may reuse the name or the inode).
                moved = [d, *d.rglob("*")] if d.is_dir() else [d]
                entries = [(q, _key(q), stat.S_ISREG(os.lstat(q).st_mode)) for q in moved]
                trace.ops.append(("rename", ours(src), d, entries, content))

        return move

    os.open, builtins.open, io.open = os_open, py_open, py_open  # type: ignore[assignment]
    os.fsync, os.rename, os.replace = fsync, mover("rename"), mover("replace")  # type: ignore[assignment]
    try:
        yield trace
    finally:
        os.open, os.fsync, os.rename, os.replace = (
            real["os_open"],
            real["fsync"],
            real["rename"],
            real["replace"],
        )  # type: ignore[assignment]
        builtins.open = io.open = real["open"]  # type: ignore[assignment]


def _key(p: Path) -> Key:
    st = os.lstat(p)
    return (st.st_dev, st.st_ino)


def violations(trace: Trace, store_root: Path) -> list[str]:
    """Every broken durability rule in ``trace``, as one line each (empty: power-loss safe)."""
    out: list[str] = []
    ops = trace.ops
    last_write: dict[Key, int] = {}
    for i, op in enumerate(ops):
        if op[0] == "write":
            last_write[op[1]] = i
        if op[0] != "rename":
            continue
        _, _src, dst, entries, _content = op
        for p, k, regular in entries:
            if regular:
                w = last_write.get(k, -1)
                if not trace.index_of_fsync(k, w, i):
                    out.append(f"{p.name}: not fsynced between its last write and the rename to {dst.name}")
            elif not trace.index_of_fsync(k, -1, i):
                out.append(f"directory {p.name}: not fsynced before the rename to {dst.name}")
        if not trace.index_of_fsync(_key(dst.parent), i, len(ops)):  # directories stay put
            out.append(f"{dst.parent.name}/: not fsynced after the rename to {dst.name}")
    # state.json names the new bundle only once the bundle's rename is durable.
    bundles = _key(store_root / BUNDLES_DIR)
    for i, op in enumerate(ops):
        if op[0] != "rename" or op[2].name != STATE_FILE or not op[4] or not op[4].get("active"):
            continue
        sha = op[4]["active"]["sha256"]
        made = [j for j, o in enumerate(ops[:i]) if o[0] == "rename" and o[2].name == sha]
        if made and not trace.index_of_fsync(bundles, made[-1], i):
            out.append(f"state.json names bundle {sha[:12]} before bundles/ was fsynced after its rename")
        elif not made and not (store_root / BUNDLES_DIR / sha).is_dir():
            out.append(f"state.json names bundle {sha[:12]} that does not exist")
    return out


def _install(w: World, version: str) -> Trace:
    host = FakeHost()
    u = w.updater(host)
    u.boot()
    with recording(w.state_dir) as trace:
        out = u.install_from_dir(w.repo_dir, name="tiny", version=version)
    assert out.status == "installed", out
    return trace


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.release("1.0.0")
    w.release("1.1.0")
    return w


def test_an_install_survives_power_loss_at_any_instant(world: World) -> None:
    first = _install(world, "1.0.0")
    second = _install(world, "1.1.0")
    for trace in (first, second):
        renames = [op for op in trace.ops if op[0] == "rename"]
        assert any(op[2].name == STATE_FILE for op in renames), "the trace saw no state.json replace"
        assert any(op[2].parent.name == BUNDLES_DIR for op in renames), "the trace saw no bundle rename"
        assert violations(trace, world.state_dir.resolve()) == []
    assert ModelStore(world.state_dir).read_state().active.version == "1.1.0"  # type: ignore[union-attr]


def test_the_checker_sees_a_missing_fsync(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards the checker: the same install with the bundle directory's fsync removed is caught.
    from edge_agent import store

    real = store.fsync_dir
    monkeypatch.setattr(store, "fsync_dir", lambda d: None if Path(d).name == BUNDLES_DIR else real(d))
    trace = _install(world, "1.0.0")
    found = violations(trace, world.state_dir.resolve())
    assert any("bundles/: not fsynced after the rename" in v for v in found), found
    assert any("before bundles/ was fsynced" in v for v in found), found
