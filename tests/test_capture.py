"""The capture side's frame queue (edge_agent/capture.py): an unpaced replay waits for room instead
of dropping frames, and shutdown never leaves the producer stuck."""

from __future__ import annotations

import sys
import threading

import numpy as np

from edge_agent.capture import DropOldestQueue
from edge_agent.frames import Frame
from tests.mqtt import wait_until


def _frame(i: int) -> Frame:
    return Frame(i, 0.0, np.zeros((2, 2, 3), dtype=np.uint8))


def _waiting_in_put(thread: threading.Thread) -> bool:
    """Whether ``thread`` is parked inside ``DropOldestQueue.put``, waiting on its condition
    (read from the thread's own stack: no timing guess)."""
    frame = sys._current_frames().get(thread.ident or -1)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return "put" in names and names[0] == "wait"


def _producer(q: DropOldestQueue, frame: Frame) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    t = threading.Thread(target=lambda: (q.put(frame), done.set()), daemon=True)
    t.start()
    # Either it parks waiting for room, or (a queue that does not wait) it finishes its put.
    wait_until(lambda: done.is_set() or _waiting_in_put(t), 5, interval=0.01, what="the producer's put")
    return t, done


def test_blocking_queue_waits_for_room_instead_of_dropping() -> None:
    q = DropOldestQueue(2, block_when_full=True)
    q.put(_frame(0))
    q.put(_frame(1))
    _, done = _producer(q, _frame(2))
    assert not done.is_set() and len(q) == 2  # full: the producer waits, nothing dropped
    first = q.get(1.0)
    assert first is not None and first.index == 0
    assert done.wait(5)  # room: the producer goes on
    assert [q.get(1.0).index for _ in range(2)] == [1, 2]  # type: ignore[union-attr]
    assert q.dropped_total == 0


def test_a_live_source_queue_drops_the_oldest_at_once() -> None:
    q = DropOldestQueue(1)
    q.put(_frame(0))
    _, done = _producer(q, _frame(1))
    assert done.is_set()  # a camera does not wait: the oldest frame goes
    assert q.dropped_total == 1 and q.get(1.0).index == 1  # type: ignore[union-attr]


def test_released_queue_drops_the_oldest_again() -> None:
    q = DropOldestQueue(1, block_when_full=True)
    q.put(_frame(0))
    _, done = _producer(q, _frame(1))
    assert not done.is_set()
    q.release_blocked()  # shutdown: never leave the capture thread stuck
    assert done.wait(5)
    assert q.dropped_total == 1 and q.get(1.0).index == 1  # type: ignore[union-attr]
