"""TUF refusals say what is wrong and what to do; a local export is never retried like a network.

The typed reason stays the contract (events' ``data.reason``); the library's own words move to
``data.detail`` and out of the one-line message. A file missing from a USB export is reported at
once as ``incomplete`` (a directory does not heal by waiting): the updater's backoff seam must
never be called.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edge_agent.updates import Updater
from fleet_server.tuf_repo import target_file_name
from tests.fault_support import DeviceClock
from tests.updates_support import FakeHost, World


@pytest.fixture
def device(tmp_path: Path) -> tuple[World, FakeHost, Updater, list[float], DeviceClock]:
    w = World(tmp_path)
    w.release("1.0.0")
    host, clock = FakeHost(), DeviceClock()
    u = w.updater(host, now=clock)
    slept: list[float] = []
    u.sleep = slept.append
    u.boot()
    assert u.install_from_dir(w.repo_dir, name="tiny", version="1.0.0").status == "installed"
    w.release("1.1.0")
    host.events.clear()
    return w, host, u, slept, clock


def _target(w: World, file: str) -> Path:
    md = w.repository().targets()
    assert md is not None
    tf = md.signed.targets[f"tiny/1.1.0/{file}"]
    return w.repo_dir / "targets" / target_file_name(tf.path, tf.hashes["sha256"])


def _refused(w: World, host: FakeHost, reason: str) -> dict[str, object]:
    ev = host.last("update.rejected")
    assert ev["data"]["reason"] == reason, ev
    state = ModelStore(w.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.0.0"
    return ev


def test_a_file_missing_from_an_export_fails_at_once_without_retries(device) -> None:  # type: ignore[no-untyped-def]
    w, host, u, slept, _ = device
    _target(w, "model.onnx").unlink()
    out = u.install_from_dir(w.repo_dir, name="tiny", version="1.1.0")
    assert (out.status, out.reason) == ("rejected", "incomplete"), out
    _refused(w, host, "incomplete")
    assert slept == [], "a local directory was retried with backoff"


def test_missing_metadata_in_an_export_fails_at_once_without_retries(device) -> None:  # type: ignore[no-untyped-def]
    w, _host, u, slept, _ = device
    (w.repo_dir / "metadata" / "timestamp.json").unlink()
    out = u.install_from_dir(w.repo_dir, name="tiny", version="1.1.0")
    assert (out.status, out.reason) == ("rejected", "incomplete"), out
    assert slept == []


def _library_words_only_in_detail(ev: dict[str, object]) -> None:
    data = ev["data"]
    assert isinstance(data, dict) and data.get("detail"), ev
    assert str(data["detail"]) not in str(ev["message"]), "raw library text in the message"


def test_tampered_file_names_the_fault_not_the_library(device) -> None:  # type: ignore[no-untyped-def]
    w, host, u, slept, _ = device
    p = _target(w, "model.onnx")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    out = u.install_from_dir(w.repo_dir, name="tiny", version="1.1.0")
    assert out.reason == "hash"
    _library_words_only_in_detail(_refused(w, host, "hash"))
    assert slept == []


def test_another_fleets_export_is_a_signature_refusal(device, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w, host, u, _, _ = device
    other = World(tmp_path / "other")
    other.release("1.1.0")
    out = u.install_from_dir(other.repo_dir, name="tiny", version="1.1.0")
    assert out.reason == "signature"
    _library_words_only_in_detail(_refused(w, host, "signature"))


def test_stale_copy_of_an_export_is_a_replay_refusal(device, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w, host, u, _, _ = device
    old = tmp_path / "old-stick"
    shutil.copytree(w.repo_dir, old)
    w.release("1.2.0")
    assert u.install_from_dir(w.repo_dir, name="tiny", version="1.2.0").status == "installed"
    out = u.install_from_dir(old, name="tiny", version="1.1.0")
    assert out.reason == "replay"
    ev = host.last("update.rejected")
    assert ev["data"]["reason"] == "replay"
    _library_words_only_in_detail(ev)


def test_an_expired_export_is_reported_as_expired_with_the_clock_used(device) -> None:  # type: ignore[no-untyped-def]
    w, host, u, slept, clock = device
    with clock.skewed(timedelta(days=30)):  # the stick sat in a drawer past its expiry
        out = u.install_from_dir(w.repo_dir, name="tiny", version="1.1.0")
    assert out.reason == "expired"
    ev = _refused(w, host, "expired")
    _library_words_only_in_detail(ev)
    assert "device_clock" in ev["data"]  # type: ignore[operator]
    assert slept == []
