"""The device clock set far in the future, far in the past, and fast then corrected.

The line keeps running on its verified model (the serving runner is never touched: the model does
not depend on the clock), updates are refused with an event that says why (``expired`` with the
clock the device used, or ``clock`` with the clock and the floor), and once the clock is right the
same update installs with nothing to repair. The clock floor comes from the signing time the fleet
put in the timestamp, never from the device's own clock: a clock that ran fast during an install
leaves nothing behind. The device's TUF client runs against an HTTP repository; its clock is
skewed through our seam (``Updater(now=...)``, tests.fault_support.DeviceClock).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge_agent.store import ModelStore
from edge_agent.trust import CLOCK_SKEW_TOLERANCE_S, TrustedRepository
from tests.fault_support import DeviceClock
from tests.updates_support import FakeHost, World, tuf_http_server

Device = tuple[World, FakeHost, object, DeviceClock]


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    w = World(tmp_path)
    w.release("1.0.0")
    with tuf_http_server(w.repo_dir) as (host_, port):
        host = FakeHost()
        clock = DeviceClock()
        u = w.updater(host, repository_url=f"http://{host_}:{port}", now=clock)
        assert u.deploy("tiny", "1.0.0", cmd_id="d-0").status == "installed"
        w.release("1.1.0")
        yield w, host, u, clock


def _still_serving(w: World, host: FakeHost, runner: object) -> None:
    assert host.runner is runner, "the serving model was swapped"
    x = np.zeros(runner.manifest.input.shape, dtype=np.float32)  # type: ignore[attr-defined]
    assert np.isfinite(runner.run_tensor(x)[0]).all()  # type: ignore[attr-defined]
    state = ModelStore(w.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.0.0"


def test_clock_far_in_the_future_refuses_updates_and_keeps_the_model(device: Device) -> None:
    w, host, u, clock = device
    serving, swaps = host.runner, host.swaps
    with clock.skewed(timedelta(days=400)):
        out = u.deploy("tiny", "1.1.0", cmd_id="d-future")  # type: ignore[attr-defined]
    assert out.status == "rejected" and out.reason == "expired", out
    ev = host.last("update.rejected")
    assert ev["data"]["reason"] == "expired"
    assert datetime.fromisoformat(ev["data"]["device_clock"]).year >= datetime.now(UTC).year + 1
    assert host.swaps == swaps
    _still_serving(w, host, serving)
    # Clock fixed: the same update installs, nothing to repair.
    assert u.deploy("tiny", "1.1.0", cmd_id="d-now").status == "installed"  # type: ignore[attr-defined]


def test_clock_far_in_the_past_refuses_updates_and_keeps_the_model(device: Device) -> None:
    w, host, u, clock = device
    serving, swaps = host.runner, host.swaps
    with clock.skewed(-timedelta(days=3650)):
        out = u.deploy("tiny", "1.1.0", cmd_id="d-past")  # type: ignore[attr-defined]
    assert out.status == "rejected" and out.reason == "clock", out
    data = host.last("update.rejected")["data"]
    floor, used = datetime.fromisoformat(data["clock_floor"]), datetime.fromisoformat(data["device_clock"])
    assert abs((floor - datetime.now(UTC)).total_seconds()) < 600, "the floor is the fleet's signing time"
    assert (floor - used).days > 3000
    assert host.swaps == swaps
    _still_serving(w, host, serving)
    assert u.deploy("tiny", "1.1.0", cmd_id="d-now").status == "installed"  # type: ignore[attr-defined]
    assert ModelStore(w.state_dir).read_state().active.version == "1.1.0"  # type: ignore[union-attr]


def test_a_clock_that_ran_fast_and_was_corrected_accepts_updates_at_once(device: Device) -> None:
    # Issue 13 hole 4: one install 20 h ahead used to raise the floor 20 h into the future.
    w, _, u, clock = device
    with clock.skewed(timedelta(hours=20)):
        assert u.deploy("tiny", "1.1.0", cmd_id="d-fast").status == "installed"  # type: ignore[attr-defined]
    floor = TrustedRepository(
        ModelStore(w.state_dir).tuf_dir, w.keys / "root.json", metadata_base_url="", target_base_url=""
    )
    assert floor.clock_floor() is not None
    assert (floor.clock_floor() - datetime.now(UTC)).total_seconds() < CLOCK_SKEW_TOLERANCE_S  # type: ignore[operator]
    w.release("1.2.0")
    out = u.deploy("tiny", "1.2.0", cmd_id="d-right")  # type: ignore[attr-defined]
    assert out.status == "installed", out
    assert ModelStore(w.state_dir).read_state().active.version == "1.2.0"  # type: ignore[union-attr]


def test_the_skewed_clock_reaches_the_tuf_client(device: Device) -> None:
    # Guards the seam: without the skew, the same update at the same moment installs.
    _, _, u, clock = device
    with clock.skewed(timedelta(0)):
        assert u.deploy("tiny", "1.1.0", cmd_id="d-0s").status == "installed"  # type: ignore[attr-defined]


def test_a_future_issue_time_signed_by_the_fleet_heals_with_its_next_timestamp(device: Device) -> None:
    # A fleet server whose own clock ran ahead signs a floor in the future: devices refuse
    # (reason clock) until it signs a correct timestamp, then install at once.
    from edge_agent.trust import ISSUED_FIELD, issued_fields
    from fleet_server import keys as keymod

    w, host, u, _ = device
    ts = w.repository().timestamp()
    assert ts is not None
    ts.signed.version += 1
    ts.signed.unrecognized_fields.update(issued_fields(datetime.now(UTC) + timedelta(days=30)))
    ts.signatures.clear()
    ts.sign(keymod.load_signer(w.keys, "timestamp"))
    (w.repo_dir / "metadata" / "timestamp.json").write_bytes(ts.to_bytes())
    out = u.deploy("tiny", "1.1.0", cmd_id="d-bad-floor")  # type: ignore[attr-defined]
    assert out.reason == "clock", out
    assert ISSUED_FIELD in ts.signed.unrecognized_fields
    w.release("1.2.0")  # the fleet signs a new timestamp with its (now right) clock
    assert u.deploy("tiny", "1.2.0", cmd_id="d-healed").status == "installed"  # type: ignore[attr-defined]
    assert host.last("update.installed")["model"].version == "1.2.0"
