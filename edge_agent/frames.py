"""A frame and the interface every frame source implements, and the real-time pacing they share.

The concrete sources (a camera or stream in ``sources.py``, an image folder, a simulator
recording) import this module; ``sources.open_source`` picks one. Kept apart so the sources do
not import the module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: BGR uint8 (H, W, 3), or grey (H, W) when ``decode`` says so.

    ``decode`` is how the source decoded it (edge_agent.decode); a reduced decode keeps the
    JPEG bytes in ``encoded`` so a consumer that needs full colour can decode again.
    """

    index: int  # position in the stream, from 0, gap-free as delivered by the source
    captured_at: float  # time.monotonic() when the source produced it
    image: np.ndarray
    decode: str = "color"
    encoded: bytes | None = None


@runtime_checkable
class FrameSource(Protocol):
    """Something that produces frames. ``read`` blocks until the next frame is due.

    ``read`` returns None at the end of a finite stream; it raises SourceLostError
    when a live source fails (the caller reconnects with ``reopen``), and
    SourceError when it cannot be opened at all.
    """

    @property
    def fps(self) -> float | None: ...

    @property
    def description(self) -> str: ...

    def read(self) -> Frame | None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class Pacer:
    """Delivers the ``n``-th frame no earlier than ``n / fps`` seconds after the first (replay at
    camera rate); ``restart`` begins a new timeline (a source looped or reopened)."""

    def __init__(self, fps: float, clock: Callable[[], float], sleep: Callable[[float], object]) -> None:
        self.fps = fps
        self._clock, self._sleep = clock, sleep
        self._t0: float | None = None

    def wait(self, delivered: int) -> None:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + delivered / self.fps
        if due > now:
            self._sleep(due - now)

    def restart(self) -> None:
        self._t0 = None
