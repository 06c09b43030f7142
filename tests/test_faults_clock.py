"""The device clock set far in the future and far in the past.

The line keeps running on its verified model (the serving runner is never touched: the model does
not depend on the clock), updates are refused with an event that says why (``expired`` with the
clock the device used, or ``clock``), and once the clock is right the same update installs with
nothing to repair. The device's TUF client runs against an HTTP repository with its clock skewed
(tests.fault_support.device_clock).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from edge_agent.store import ModelStore
from tests.fault_support import device_clock
from tests.updates_support import FakeHost, World, tuf_http_server


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[World, FakeHost, object]]:
    w = World(tmp_path)
    w.release("1.0.0")
    with tuf_http_server(w.repo_dir) as (host_, port):
        host = FakeHost()
        u = w.updater(host, repository_url=f"http://{host_}:{port}")
        assert u.deploy("tiny", "1.0.0", cmd_id="d-0").status == "installed"
        w.release("1.1.0")
        yield w, host, u


def _still_serving(w: World, host: FakeHost, runner: object) -> None:
    assert host.runner is runner, "the serving model was swapped"
    x = np.zeros(runner.manifest.input.shape, dtype=np.float32)  # type: ignore[attr-defined]
    assert np.isfinite(runner.run_tensor(x)[0]).all()  # type: ignore[attr-defined]
    state = ModelStore(w.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.0.0"


def test_clock_far_in_the_future_refuses_updates_and_keeps_the_model(
    device: tuple[World, FakeHost, object],
) -> None:
    w, host, u = device
    serving, swaps = host.runner, host.swaps
    with device_clock(timedelta(days=400)):
        out = u.deploy("tiny", "1.1.0", cmd_id="d-future")  # type: ignore[attr-defined]
    assert out.status == "rejected" and out.reason == "expired", out
    ev = host.last("update.rejected")
    assert ev["data"]["reason"] == "expired" and "device clock reads" in ev["message"]
    assert int(ev["message"].split("device clock reads ")[1][:4]) >= 2027
    assert host.swaps == swaps
    _still_serving(w, host, serving)
    # Clock fixed: the same update installs, nothing to repair.
    assert u.deploy("tiny", "1.1.0", cmd_id="d-now").status == "installed"  # type: ignore[attr-defined]


def test_clock_far_in_the_past_refuses_updates_and_keeps_the_model(
    device: tuple[World, FakeHost, object],
) -> None:
    w, host, u = device
    serving, swaps = host.runner, host.swaps
    with device_clock(-timedelta(days=3650)):
        out = u.deploy("tiny", "1.1.0", cmd_id="d-past")  # type: ignore[attr-defined]
    assert out.status == "rejected" and out.reason == "clock", out
    ev = host.last("update.rejected")
    assert "fix the clock" in ev["message"]
    assert host.swaps == swaps
    _still_serving(w, host, serving)
    assert u.deploy("tiny", "1.1.0", cmd_id="d-now").status == "installed"  # type: ignore[attr-defined]
    assert ModelStore(w.state_dir).read_state().active.version == "1.1.0"  # type: ignore[union-attr]


def test_the_skewed_clock_reaches_the_tuf_client(device: tuple[World, FakeHost, object]) -> None:
    # Guards the helper: without the skew, the same update at the same moment installs.
    _, _, u = device
    with device_clock(timedelta(0)):
        assert u.deploy("tiny", "1.1.0", cmd_id="d-0s").status == "installed"  # type: ignore[attr-defined]
