"""In-memory fakes for agent tests: a frame source, a publisher that drains the spool at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.frames import Frame
from edge_agent.spool import Spool
from lineside_common.errors import SourceError, SourceLostError


class ListSource:
    """Frames from a list; ``lose_at`` raises SourceLostError there until ``restore()`` is called."""

    def __init__(
        self, images: list[np.ndarray], *, lose_at: int | None = None, period_s: float = 0.0
    ) -> None:
        self.images = images
        self.i = 0
        self.lose_at = lose_at
        self.present = threading.Event()
        self.present.set()
        self.period_s = period_s
        self.reopens = 0
        self.closed = False

    @property
    def fps(self) -> float | None:
        return None

    @property
    def description(self) -> str:
        return "list-source"

    def read(self) -> Frame | None:
        if self.lose_at is not None and self.i == self.lose_at:
            self.lose_at = None
            self.present.clear()
            raise SourceLostError("camera unplugged")
        if self.i >= len(self.images):
            return None
        if self.period_s:
            time.sleep(self.period_s)  # a camera's frame interval, not synchronisation
        f = Frame(self.i, time.monotonic(), self.images[self.i])
        self.i += 1
        return f

    def restore(self) -> None:
        self.present.set()

    def reopen(self) -> None:
        self.reopens += 1
        if not self.present.is_set():
            raise SourceError("no such device")

    def close(self) -> None:
        self.closed = True


class SpoolDrainingPublisher:
    """Publisher fake: "delivers" spooled messages immediately, in order; records everything."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.lock = threading.Lock()
        self.delivered: list[tuple[str, dict[str, Any]]] = []
        self.states: list[dict[str, Any]] = []
        self.decisions: list[dict[str, Any]] = []
        self.on_command: Callable[[str, bytes], None] | None = None
        self.stopped = False

    @property
    def connected(self) -> bool:
        return True

    def start(self, on_command: Callable[[str, bytes], None]) -> None:
        self.on_command = on_command

    def notify(self) -> None:
        with self.lock:
            for e in self.spool.pending():
                data = e.read()
                if data is not None:
                    self.delivered.append((e.channel, json.loads(data)))
                self.spool.remove(e.order)

    def publish_state(self, payload: bytes) -> None:
        with self.lock:
            self.states.append(json.loads(payload))

    def publish_decision(self, payload: bytes) -> None:
        self.decisions.append(json.loads(payload))

    def stop(self, flush_timeout: float) -> None:
        self.notify()
        self.stopped = True

    def of(self, channel: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for ch, p in self.delivered if ch == channel]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.of("events") if kind is None or e["kind"] == kind]


def images(n: int, seed: int = 0, size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(n)]


def agent_config(state_dir: Path, **over: Any) -> Any:
    from edge_agent.config import parse_config

    raw: dict[str, Any] = {
        "device_id": "dev-1",
        "state_dir": str(state_dir),
        "source": {"uri": "fake", "queue_size": 1000, "reconnect_initial_s": 0.02, "reconnect_max_s": 0.05},
        "broker": {"url": None},
        "telemetry": {"window_s": 0.2},
    }
    for k, v in over.items():
        node = raw
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return parse_config(raw)
