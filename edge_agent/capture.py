"""Capture: a thread that reads the frame source into a bounded, drop-oldest queue.

A source that goes away (camera unplugged, file removed) is reopened with
capped exponential backoff; the agent hears about it through ``on_lost`` and
``on_restored`` (it turns them into ``camera.lost`` / ``camera.restored``
events). The queue never blocks capture: when inference falls behind, the
oldest frame is dropped and counted.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from edge_agent.frames import Frame, FrameSource
from lineside_common.errors import SourceError
from lineside_common.retry import Backoff

log = logging.getLogger(__name__)


class DropOldestQueue:
    """A bounded single-producer/single-consumer frame queue that drops the oldest frame when full."""

    def __init__(self, maxsize: int, *, block_when_full: bool = False) -> None:
        self.maxsize = maxsize
        # A replay as fast as possible has no camera to keep up with: waiting for room beats
        # decoding frames only to drop them (wasted CPU, lost frames).
        self.block_when_full = block_when_full
        self._released = False
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._dropped = 0
        self.dropped_total = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            while self.block_when_full and not self._released and len(self._items) >= self.maxsize:
                self._cond.wait(0.1)
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self._dropped += 1
                self.dropped_total += 1
            self._items.append(frame)
            self._cond.notify()

    def get(self, timeout: float) -> Frame | None:
        """The oldest frame, or None after ``timeout`` seconds without one."""
        with self._cond:
            if not self._items and not self._cond.wait(timeout):
                return None
            if not self._items:
                return None
            frame = self._items.popleft()
            if self.block_when_full:
                self._cond.notify()  # the producer may be waiting for room
            return frame

    def release_blocked(self) -> None:
        """Stop waiting for room from now on (shutdown): a blocked ``put`` drops the oldest instead."""
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def take_dropped(self) -> int:
        """Frames dropped since the last call."""
        with self._cond:
            n, self._dropped = self._dropped, 0
            return n

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class CaptureThread:
    """Reads ``source`` until stopped; reconnects on SourceError; stops at the end of a finite source."""

    def __init__(
        self,
        source: FrameSource,
        frames: DropOldestQueue,
        *,
        loop: bool = False,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        on_lost: Callable[[str], None] = lambda why: None,
        on_restored: Callable[[int], None] = lambda attempts: None,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        self.source = source
        self.frames = frames
        self.loop = loop
        self._backoff = Backoff(reconnect_initial_s, reconnect_max_s)
        self._on_lost, self._on_restored, self._on_end = on_lost, on_restored, on_end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.state = "starting"  # running | lost | ended | stopped
        self.frames_read = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.frames.release_blocked()
        self._thread.join(timeout=timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        self.state = "running"
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read()
                except SourceError as exc:
                    if not self._reconnect(str(exc)):
                        return
                    continue
                if frame is None:
                    if self.loop:
                        try:
                            self.source.reopen()
                            continue
                        except SourceError as exc:
                            if not self._reconnect(str(exc)):
                                return
                            continue
                    self.state = "ended"
                    log.info("source %s ended", self.source.description)
                    self._on_end()
                    return
                self.frames_read += 1
                self.frames.put(frame)
        except Exception:
            log.exception("capture thread crashed")
            self.state = "crashed"
            raise
        finally:
            if self.state == "running":
                self.state = "stopped"

    def _reconnect(self, why: str) -> bool:
        """Reopen with backoff until it works (True) or we are stopped (False)."""
        self.state = "lost"
        log.warning("source %s lost: %s", self.source.description, why)
        self._on_lost(why)
        self._backoff.reset()
        attempts = 0
        while not self._stop.is_set():
            if self._stop.wait(self._backoff.next_delay()):
                return False
            attempts += 1
            try:
                self.source.reopen()
            except SourceError as exc:
                log.info("reopening %s failed (attempt %d): %s", self.source.description, attempts, exc)
                continue
            self.state = "running"
            log.info("source %s restored after %d attempts", self.source.description, attempts)
            self._on_restored(attempts)
            return True
        return False
