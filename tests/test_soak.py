"""Soak: three real agents at camera rate for ``LINESIDE_SOAK_S`` (default 900 s) under periodic
rollouts and rollbacks, with Mosquitto and ``fleet serve``.

Slow: out of the default run (``make test`` deselects ``slow``); run it with ``make soak``
(``LINESIDE_SOAK_S=180 make soak`` for a shorter one). It checks, per agent:

- resident memory and open file descriptors flat: the last third of the run against the first
  third (after a warm-up cycle), within a stated margin;
- no lost sequence numbers: the server holds exactly every telemetry window and event produced;
- the state directory bounded: at most two bundles retained (active and previous), no staging
  leftovers, and its size no larger than after the first cycle plus the size of one bundle.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentProcess
from tests.fault_support import LineRig, open_fds, persistent_broker, rss_bytes, tree_size
from tests.mqtt import Mosquitto, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SOAK_S = float(os.environ.get("LINESIDE_SOAK_S", "900"))
RSS_MARGIN = 1.15  # last third's median RSS may be at most 15 % (and 8 MiB) above the first third's
RSS_SLACK_BYTES = 8 << 20
FD_SLACK = 4


class Sampler:
    """Records (t, rss, fds, state-dir bytes) per agent whenever it is polled (from wait loops)."""

    def __init__(self, line: LineRig) -> None:
        self.line = line
        self.samples: dict[str, list[tuple[float, int, int, int]]] = {d: [] for d in line.device_ids}
        self._last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < 1.0:
            return
        self._last = now
        for d, agent in self.line.agents.items():
            pid = agent.proc.pid
            self.samples[d].append((now, rss_bytes(pid), open_fds(pid), tree_size(self.line.state_dir(d))))


def _wait(line: LineRig, sample: Sampler, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    def polled() -> Any:
        sample()
        return predicate()

    return wait_until(polled, timeout, interval=0.2, what=what)


def test_soak(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    edge_agent_process: Callable[..., AgentProcess],
) -> None:
    broker = persistent_broker(mosquitto_factory)
    line = LineRig(tmp_path, broker, edge_agent_process, fps=30.0)
    line.start()
    sample = Sampler(line)
    cycles: list[dict[str, Any]] = []
    try:
        _wait(
            line,
            sample,
            lambda: len(line.devices()) == 3 and all(d["online"] for d in line.devices().values()),
            60,
            "3 agents online",
        )
        t0 = time.monotonic()
        warm_until = None
        version = 1
        while time.monotonic() - t0 < SOAK_S or len(cycles) < 2:
            version += 1
            new = f"{version}.0.0"
            line.release(new)
            started = time.monotonic()
            rid = line.rollout(new, soak="1s")
            _wait(
                line,
                sample,
                lambda rid=rid: line.rollout_state(rid)["state"] != "running",
                300,
                f"rollout {new}",
            )
            st = line.rollout_state(rid)
            assert st["state"] == "succeeded", st
            _wait(
                line,
                sample,
                lambda new=new: set(line.active().values()) == {f"shapes@{new}"},
                60,
                f"all on {new}",
            )
            previous = {d["previous_model"] for d in line.devices().values()}
            line.rollback_all()
            _wait(
                line,
                sample,
                lambda previous=previous: set(line.active().values()) == previous,
                60,
                "rolled back",
            )
            cycles.append({"version": new, "s": round(time.monotonic() - started, 1)})
            if warm_until is None:
                warm_until = time.monotonic()
                first_cycle_size = {d: tree_size(line.state_dir(d)) for d in line.device_ids}
        for d in line.device_ids:
            bundles = [p for p in (line.state_dir(d) / "models" / "bundles").iterdir()]
            assert len(bundles) <= 2, (d, bundles)
            staging = line.state_dir(d) / "models" / "staging"
            assert not staging.exists() or list(staging.iterdir()) == [], (d, list(staging.iterdir()))
        line.assert_nothing_lost()
    finally:
        line.stop()

    one_bundle = tree_size(line.bundle("1.0.0"))
    report = []
    for d, rows in sample.samples.items():
        steady = [r for r in rows if warm_until is not None and r[0] >= warm_until]
        assert len(steady) >= 9, f"{d}: too few samples after warm-up ({len(steady)}): run longer"
        third = len(steady) // 3
        first, last = steady[:third], steady[-third:]
        rss_first = statistics.median(r[1] for r in first)
        rss_last = statistics.median(r[1] for r in last)
        fd_first, fd_last = max(r[2] for r in first), max(r[2] for r in last)
        size_max = max(r[3] for r in steady)
        report.append(
            f"{d}: rss {rss_first / 2**20:.1f}→{rss_last / 2**20:.1f} MiB, fds {fd_first}→{fd_last}, "
            f"state dir max {size_max / 1024:.0f} KiB (after cycle 1: {first_cycle_size[d] / 1024:.0f} KiB)"
        )
        assert rss_last <= rss_first * RSS_MARGIN + RSS_SLACK_BYTES, report[-1]
        assert fd_last <= fd_first + FD_SLACK, report[-1]
        assert size_max <= first_cycle_size[d] + one_bundle + 256 * 1024, report[-1]
    print(f"soak {SOAK_S:.0f}s, {len(cycles)} rollout+rollback cycles: {cycles}")
    print("\n".join(report))
