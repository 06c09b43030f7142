"""The network to the artifact server is cut mid-download: the device retries with backoff and
succeeds; with retries exhausted it keeps serving its verified model and says why.

A real TCP proxy (tests.fault_support.CuttingProxy) between the device's TUF client and an HTTP
server holding a signed repository cuts the first responses for target files after a few KiB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from tests.fault_support import CuttingProxy
from tests.updates_support import FakeHost, World, tuf_http_server

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, tuple[str, int]]]:
    w = World(tmp_path)
    w.release("1.0.0")
    w.release("1.1.0")
    with tuf_http_server(w.repo_dir) as upstream:
        yield w, upstream


def _device(w: World, url: str, **kw: object) -> tuple[FakeHost, object, list[float]]:
    host = FakeHost()
    u = w.updater(host, repository_url=url, fetch_backoff_s=0.05, fetch_backoff_max_s=0.2, **kw)
    slept: list[float] = []
    u.sleep = slept.append  # record the backoff instead of waiting it out
    return host, u, slept


def _no_leftovers(w: World) -> None:
    # Nothing half-downloaded stays behind: no staging directory, only named bundles.
    store = ModelStore(w.state_dir)
    state = store.read_state()
    names = {r.sha256 for r in (state.active, state.previous) if r is not None}
    staging = w.state_dir / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert [p for p in w.state_dir.rglob("*") if p.name.startswith(".tmp")] == []
    bundles = w.state_dir / "bundles"
    if bundles.is_dir():
        assert {p.name for p in bundles.iterdir()} <= names


def test_download_cut_twice_is_retried_with_backoff_and_installs(
    world: tuple[World, tuple[str, int]],
) -> None:
    w, upstream = world
    with CuttingProxy(upstream, cuts=2, cut_after_bytes=1500, cut_path="model.onnx") as proxy:
        host, u, slept = _device(w, proxy.url)
        out = u.deploy("tiny", "1.0.0", cmd_id="d-1")  # type: ignore[attr-defined]
    assert out.status == "installed", out
    assert len(proxy.cut_requests) == 2 and all(
        "/tuf/targets/" in r and "model.onnx" in r for r in proxy.cut_requests
    )
    assert slept == [0.05, 0.1]  # capped exponential backoff between the attempts
    installed = host.last("update.installed")
    assert len(installed["data"]["fetch_retries"]) == 2  # the operator sees that the link was flaky
    state = ModelStore(w.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.0.0"
    _no_leftovers(w)


def test_network_down_for_good_keeps_the_verified_model_and_reports(
    world: tuple[World, tuple[str, int]],
) -> None:
    w, upstream = world
    # First a clean install of 1.0.0, then every download of 1.1.0 is cut.
    with CuttingProxy(upstream, cuts=0) as clean:
        host, u, _ = _device(w, clean.url, fetch_attempts=3)
        assert u.deploy("tiny", "1.0.0", cmd_id="d-0").status == "installed"  # type: ignore[attr-defined]
    with CuttingProxy(upstream, cuts=100, cut_after_bytes=1500, cut_path="model.onnx") as proxy:
        host, u, slept = _device(w, proxy.url, fetch_attempts=3)
        out = u.deploy("tiny", "1.1.0", cmd_id="d-1")  # type: ignore[attr-defined]
    assert out.status == "failed" and out.reason == "fetch", out
    assert len(proxy.cut_requests) == 3 and len(slept) == 2
    failed = host.last("update.failed")
    assert failed["data"]["reason"] == "fetch"  # the attempts: the proxy's 3 cut requests above
    state = ModelStore(w.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.0.0"  # the line keeps its model
    _no_leftovers(w)


def test_without_retries_one_cut_fails_the_update(world: tuple[World, tuple[str, int]]) -> None:
    # The protection removed (one attempt): the same single cut is a failed update.
    w, upstream = world
    with CuttingProxy(upstream, cuts=1, cut_after_bytes=1500, cut_path="model.onnx") as proxy:
        _, u, _ = _device(w, proxy.url, fetch_attempts=1)
        out = u.deploy("tiny", "1.0.0", cmd_id="d-1")  # type: ignore[attr-defined]
    assert out.status == "failed" and out.reason == "fetch", out
    assert len(proxy.cut_requests) == 1
