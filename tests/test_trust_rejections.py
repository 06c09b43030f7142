"""Acceptance: every untrusted or unsuitable release is rejected, nothing installed, old model kept."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, TargetFile, Targets, Timestamp

from edge_agent.store import ModelStore
from edge_agent.updates import Outcome, Updater
from fleet_server import keys as keymod
from fleet_server.tuf_repo import Repository, target_file_name
from tests.updates_support import FakeHost, World


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.release("1.0.0")
    return w


def _installed(w: World) -> tuple[FakeHost, Updater]:
    host = FakeHost()
    u = w.updater(host)
    u.boot()
    out = u.install_from_dir(w.repo_dir, name="tiny", version="1.0.0")
    assert out.status == "installed"
    assert out.model is not None
    host.runner = u.load_runner(w.store().bundle_dir(out.model))
    host.events.clear()
    return host, u


def _assert_rejected(w: World, host: FakeHost, outcome: Outcome, reason: str, version: str = "1.1.0") -> None:
    assert outcome.status in ("rejected", "failed"), outcome
    assert outcome.reason == reason, outcome
    state = ModelStore(w.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.0.0"
    assert not state.probation
    assert host.runner.manifest.version == "1.0.0"  # still serving the old model
    stored = {p.name for p in (w.state_dir / "bundles").iterdir()}
    assert stored == {state.active.sha256}  # nothing of the rejected release stays
    assert list((w.state_dir / "staging").iterdir()) == []
    kind = "update.rejected" if outcome.status == "rejected" else "update.failed"
    ev = host.last(kind)
    assert ev["data"]["reason"] == reason
    assert version in ev["message"]


def _target_path(w: World, version: str, file: str) -> Path:
    md = w.repository().targets()
    assert md is not None
    tf = md.signed.targets[f"tiny/{version}/{file}"]
    return w.repo_dir / "targets" / target_file_name(tf.path, tf.hashes["sha256"])


def test_flipped_byte_is_rejected(world: World) -> None:
    host, u = _installed(world)
    world.release("1.1.0")
    p = _target_path(world, "1.1.0", "model.onnx")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0")
    _assert_rejected(world, host, out, "hash")


def test_file_longer_than_signed_is_rejected(world: World) -> None:
    host, u = _installed(world)
    world.release("1.1.0")
    p = _target_path(world, "1.1.0", "model.onnx")
    with p.open("ab") as f:
        f.write(b"\0" * 1_000_000)
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0")
    _assert_rejected(world, host, out, "length")


def test_metadata_signed_by_unknown_key_is_rejected(world: World, tmp_path: Path) -> None:
    host, u = _installed(world)
    # A whole repository made with other keys (same paths): the device's root does not know them.
    other = World(tmp_path / "other")
    other.release("1.1.0")
    out = u.install_from_dir(other.repo_dir, name="tiny", version="1.1.0")
    _assert_rejected(world, host, out, "signature")


@pytest.mark.parametrize("restart", [False, True])
def test_replayed_old_timestamp_and_snapshot_are_rejected(
    world: World, tmp_path: Path, restart: bool
) -> None:
    host, u = _installed(world)
    old_md = tmp_path / "old-metadata"
    shutil.copytree(world.repo_dir / "metadata", old_md)
    world.release("1.1.0")
    world.release("1.2.0")
    assert u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0").status == "installed"
    # Probation is not the point here: commit so 1.1.0 is the plain active model.
    host.events.clear()
    if restart:
        host = FakeHost()
        u = world.updater(host)
        host.runner = u.boot()
    # The attacker serves the old (validly signed, unexpired) timestamp and snapshot again.
    for name in ("timestamp.json", "snapshot.json"):
        shutil.copy2(old_md / name, world.repo_dir / "metadata" / name)
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.2.0")
    assert out.status == "rejected" and out.reason == "replay", out
    state = ModelStore(world.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.1.0"
    assert host.last("update.rejected")["data"]["reason"] == "replay"


def test_expired_metadata_is_rejected(world: World) -> None:
    host, u = _installed(world)
    world.release("1.1.0")
    repo = world.repository()
    ts = repo.timestamp()
    assert ts is not None
    ts.signed.version += 1
    ts.signed.expires = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    ts.signatures.clear()
    ts.sign(keymod.load_signer(world.keys, "timestamp"))
    (world.repo_dir / "metadata" / "timestamp.json").write_bytes(ts.to_bytes())
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0")
    _assert_rejected(world, host, out, "expired")


def test_targets_for_another_device_class_are_rejected(world: World) -> None:
    host, u = _installed(world)
    world.release("1.1.0", device_classes=("jetson-orin",))
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0")
    _assert_rejected(world, host, out, "device_class")


def test_manifest_requiring_a_newer_agent_is_rejected(world: World) -> None:
    host, u = _installed(world)
    world.release("1.1.0", min_agent_version="99.0.0")
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0")
    _assert_rejected(world, host, out, "agent_version")


def test_file_name_escaping_the_bundle_is_rejected(world: World) -> None:
    host, u = _installed(world)
    world.release("1.1.0")
    # A validly signed targets version (the targets key signs it) that names ../ in a path:
    # Repository.accept_release refuses that, so write the metadata by hand as a compromised
    # release pipeline would.
    repo = world.repository()
    cur = repo.targets()
    assert cur is not None
    signed = Targets.from_dict(cur.signed.to_dict())
    signed.version += 1
    evil = b"#!/bin/sh\necho owned\n"
    path = "tiny/1.1.0/../../../../tmp/evil.sh"
    tf = TargetFile.from_data(path, evil, ["sha256"])
    signed.targets[path] = tf
    md = Metadata(signed)
    md.sign(keymod.load_signer(world.keys, "targets"))
    data = md.to_bytes()
    (world.repo_dir / "metadata" / f"{signed.version}.targets.json").write_bytes(data)
    (world.repo_dir / "metadata" / "targets.json").write_bytes(data)
    repo._publish_snapshot(signed.version)
    out = u.install_from_dir(world.repo_dir, name="tiny", version="1.1.0")
    _assert_rejected(world, host, out, "untrusted_path")


def test_repository_refuses_an_escaping_path(world: World) -> None:
    repo = world.repository()
    cur = repo.targets()
    assert cur is not None
    signed = Targets.from_dict(cur.signed.to_dict())
    signed.version += 1
    signed.targets["tiny/2.0.0/../x"] = TargetFile.from_data("tiny/2.0.0/../x", b"x", ["sha256"])
    md = Metadata(signed)
    md.sign(keymod.load_signer(world.keys, "targets"))
    from lineside_common.errors import VerificationError

    with pytest.raises(VerificationError):
        repo.accept_release(md.to_bytes(), {"tiny/2.0.0/../x": b"x"})


def test_timestamp_type_is_what_devices_fetch(world: World) -> None:
    # The repository's entry point is plain timestamp.json; everything else is versioned.
    md = Metadata[Timestamp].from_bytes((world.repo_dir / "metadata" / "timestamp.json").read_bytes())
    assert (world.repo_dir / "metadata" / f"{md.signed.snapshot_meta.version}.snapshot.json").exists()
    assert isinstance(Repository.open(world.repo_dir, None).releases()[0].version, str)


def test_device_clock_behind_the_last_update_refuses_updates(world: World) -> None:
    from edge_agent.trust import TrustedRepository, UpdateVerificationError

    md = world.tmp / "md"
    TrustedRepository.from_directory(md, world.keys / "root.json", world.repo_dir).refresh()
    behind = TrustedRepository.from_directory(
        md, world.keys / "root.json", world.repo_dir, now=lambda: datetime.now(UTC) - timedelta(days=3)
    )
    with pytest.raises(UpdateVerificationError) as err:
        behind.refresh()
    assert err.value.reason == "clock"
    # A correct clock works again, nothing to reinstall.
    TrustedRepository.from_directory(md, world.keys / "root.json", world.repo_dir).refresh()
