"""The swap: hand a new runner to the inference loop between two frames, and measure its effect.

:class:`DecisionMeter` sits on the agent's ``on_decision`` hook and records (frame id, time) of
recent decisions; a swap waits on its condition — notified by every decision — for a few frames
on the new model (bounded: the line may be idle), then reports frames dropped and the largest gap.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from edge_agent.updates.seams import Host, Runner

# Decisions on the new model a swap waits for before it measures, and for how long at most.
FRAMES_AFTER_SWAP = 10
SETTLE_TIMEOUT_S = 1.0


class DecisionMeter:
    """Records (frame id, time) of recent decisions so a swap can report its effect on the line.

    Installed as (or chained to) the Agent's ``on_decision`` hook; one deque append per frame, and
    a notification only while a swap waits (:meth:`wait_for`).
    """

    def __init__(self, maxlen: int = 8192, clock: Callable[[], float] = time.perf_counter) -> None:
        self._d: deque[tuple[int, float]] = deque(maxlen=maxlen)
        self.clock = clock
        self._decided = threading.Condition()
        self._waiting = 0  # swaps in wait_for; changed only under the condition's lock

    def __call__(self, decision: Any) -> None:
        self._d.append((int(decision.frame_id), self.clock()))
        # A waiter counts itself under the lock before it tests its predicate, and the lock is
        # released only inside wait(): a decision that sees no waiter was seen by the predicate.
        if self._waiting:
            with self._decided:
                self._decided.notify_all()

    def snapshot(self) -> list[tuple[int, float]]:
        return list(self._d)

    def count_after(self, t: float) -> int:
        return sum(1 for _, ts in list(self._d) if ts > t)

    def wait_for(self, count: int, after: float, timeout_s: float) -> bool:
        """Block until ``count`` decisions were recorded after ``after``, or ``timeout_s`` passed."""
        with self._decided:
            self._waiting += 1
            try:
                return self._decided.wait_for(lambda: self.count_after(after) >= count, timeout=timeout_s)
            finally:
                self._waiting -= 1

    def swap_stats(self, t_start: float, t_end: float, *, after_frames: int = 10) -> dict[str, Any]:
        """Frames dropped and the largest gap between two decisions around a swap in [t_start, t_end].

        The span runs from the last decision before ``t_start`` to the ``after_frames``-th after
        ``t_end``; the median frame time is taken from the decisions before the swap.
        """
        d = self.snapshot()
        before = [x for x in d if x[1] <= t_start]
        after = [x for x in d if x[1] > t_start]
        span = before[-1:] + after[: after_frames + sum(1 for x in after if x[1] <= t_end)]
        intervals = [b[1] - a[1] for a, b in zip(before[-201:], before[-200:], strict=False)]
        gaps = [b[1] - a[1] for a, b in pairwise(span)]
        ids = [x[0] for x in span]
        dropped = sum(max(0, b - a - 1) for a, b in pairwise(ids))
        return {
            "dropped": dropped,
            "max_gap_ms": round(max(gaps, default=0.0) * 1000, 3),
            "median_frame_ms": round(statistics.median(intervals) * 1000, 3) if intervals else 0.0,
            "frames_observed": len(span),
        }


def swap_in(
    host: Host | None,
    runner: Runner,
    *,
    timeout_s: float,
    meter: DecisionMeter | None = None,
    keep_old: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Hand ``runner`` to ``host``'s inference loop between two frames; close the old one.

    Without a host (the CLI) the runner is closed and nothing is measured. ``keep_old(old)`` takes
    the old runner instead of closing it (probation's reverse shadow).
    """
    if host is None:
        runner.close()
        return {}
    t0 = time.perf_counter()
    old = host.swap_runner(runner, timeout_s=timeout_s)
    t1 = time.perf_counter()
    out: dict[str, Any] = {"handover_ms": round((t1 - t0) * 1000, 3)}
    if meter is not None:
        meter.wait_for(FRAMES_AFTER_SWAP, t1, SETTLE_TIMEOUT_S)
        out.update(meter.swap_stats(t0, t1))
    if old is not None and old is not runner:
        if keep_old is not None:
            keep_old(old)
        else:
            with contextlib.suppress(Exception):
                old.close()
    return out
