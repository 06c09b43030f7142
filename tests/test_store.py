"""ModelStore I/O: atomic state, start-up recovery, GC, disk full, and the crash-loop check at boot."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edge_agent.store_rules import BundleRef
from edge_agent.trust import TrustedRepository
from lineside_common.atomic import atomic_write_bytes
from tests.updates_support import FakeHost, World


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.release("1.0.0")
    w.release("1.1.0")
    return w


def _install(w: World, *versions: str, **kw: object) -> FakeHost:
    host = FakeHost()
    u = w.updater(host, **kw)
    host.runner = u.boot()
    for v in versions:
        assert u.install_from_dir(w.repo_dir, name="tiny", version=v).ok
    return host


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.json", b"1")
    atomic_write_bytes(tmp_path / "a.json", b"2")
    assert (tmp_path / "a.json").read_bytes() == b"2"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_recover_removes_leftovers_and_keeps_referenced_bundles(world: World) -> None:
    _install(world, "1.0.0", "1.1.0")
    store = world.store()
    (store.staging / "stage-x").mkdir()
    (store.staging / "stage-x" / "model.onnx").write_bytes(b"half")
    (store.bundles / ("f" * 64)).mkdir()
    (store.root / ".state.json.abc.tmp").write_bytes(b"{")
    state, notes = store.recover()
    assert len(notes) == 3
    assert {p.name for p in store.bundles.iterdir()} == state.referenced()
    assert list(store.staging.iterdir()) == []
    assert state.active is not None and state.active.version == "1.1.0"


def test_corrupt_active_bundle_falls_back_to_previous(world: World) -> None:
    _install(world, "1.0.0", "1.1.0")
    store = world.store()
    state = store.read_state()
    assert state.active is not None
    model = store.bundle_dir(state.active) / "model.onnx"
    model.chmod(0o644)
    model.write_bytes(model.read_bytes() + b"x")
    new, notes = store.recover()
    assert new.active is not None and new.active.version == "1.0.0" and new.previous is None
    assert any("active model unusable" in n for n in notes)


def test_gc_after_commit_keeps_only_active_and_previous(world: World) -> None:
    world.release("1.2.0")
    _install(world, "1.0.0", "1.1.0")
    store = world.store()
    from edge_agent import store_rules

    store.write_state(store_rules.commit(store.read_state()))
    u = world.updater(FakeHost())
    u.boot()
    assert u.install_from_dir(world.repo_dir, name="tiny", version="1.2.0").ok
    store.write_state(store_rules.commit(store.read_state()))
    store.gc()
    state = store.read_state()
    assert {p.name for p in store.bundles.iterdir()} == state.referenced()
    assert state.previous is not None and state.previous.version == "1.1.0"


def test_disk_full_during_staging_is_a_clean_failure(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _install(world, "1.0.0")
    u = world.updater(host)
    u.boot()

    def full(self: TrustedRepository, target: object, dest: Path) -> Path:
        dest.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TrustedRepository, "download", full)
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0")
    assert out.status == "failed" and out.reason == "disk_full", out
    ev = host.last("update.failed")
    assert ev["data"]["reason"] == "disk_full" and "disk full" in ev["message"]
    state = world.store().read_state()
    assert state.active is not None and state.active.version == "1.0.0"
    assert host.runner.manifest.version == "1.0.0"
    assert list(world.store().staging.iterdir()) == []


def test_reserve_refuses_before_downloading(world: World) -> None:
    host = _install(world, "1.0.0")
    u = world.updater(host)
    u.store = ModelStore(world.state_dir, reserve_bytes=1 << 62)
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0")
    assert out.reason == "disk_full" and world.store().read_state().active.version == "1.0.0"  # type: ignore[union-attr]


def test_crash_loop_rolls_back_at_the_next_start(world: World) -> None:
    _install(world, "1.0.0", "1.1.0", crash_loop_threshold=2)
    for boot in (1, 2):
        host = FakeHost()
        u = world.updater(host, crash_loop_threshold=2)
        assert u.boot().manifest.version == "1.1.0"  # type: ignore[union-attr]
        assert world.store().read_state().boot_count == boot
    host = FakeHost()
    u = world.updater(host, crash_loop_threshold=2)
    runner = u.boot()
    assert runner is not None and runner.manifest.version == "1.0.0"
    u.attach(host)
    ev = host.last("rollback")
    assert ev["data"]["reason"] == "crash_loop" and ev["data"]["evidence"]["boots"] == 3
    state = world.store().read_state()
    assert "tiny@1.1.0" in state.failed and not state.probation


def test_duplicate_command_is_handled_once_even_after_restart(world: World) -> None:
    host = _install(world, "1.0.0", "1.1.0")
    u = world.updater(host)
    u.boot()
    assert u.rollback(cmd_id="rb-1").status == "rolled_back"
    assert u.rollback(cmd_id="rb-1").status == "duplicate"
    restarted = world.updater(host)
    restarted.boot()
    assert restarted.rollback(cmd_id="rb-1").status == "duplicate"
    assert [k for k, kw in host.events if k == "rollback" and kw["cmd_id"] == "rb-1"] == ["rollback"]
    assert world.store().read_state().active.version == "1.0.0"  # type: ignore[union-attr]


def test_state_json_is_plain_json(world: World) -> None:
    _install(world, "1.0.0")
    doc = json.loads((world.state_dir / "state.json").read_text())
    assert doc["active"]["version"] == "1.0.0" and doc["format"] == 1
    assert BundleRef.from_dict(doc["active"]).sha256 == doc["active"]["sha256"]


def test_a_commit_without_probation_still_answers_the_rollout(world: World) -> None:
    # A rollout waits for each device's probation verdict. A first install (nothing to roll back
    # to) and a deploy of the version already serving are committed at once: the device must still
    # say so, or the rollout would wait for a verdict that never comes.
    host = FakeHost()
    u = world.updater(host)
    host.runner = u.boot()
    assert u.install_from_dir(world.repo_dir, name="tiny", version="1.0.0", cmd_id="c1").ok
    first = host.last("probation.passed")
    assert first["cmd_id"] == "c1" and first["data"]["probation"] == "skipped"
    assert (
        u.install_from_dir(world.repo_dir, name="tiny", version="1.0.0", cmd_id="c2").status
        == "already_active"
    )
    assert host.last("probation.passed")["cmd_id"] == "c2"
    assert "probation.started" not in host.kinds()
