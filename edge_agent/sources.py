"""Frame sources: where the agent's frames come from.

A camera (device index), a video file, an RTSP/HTTP stream and a simulator
recording all implement the same small interface, so a replayed recording
*is* a camera as far as the agent is concerned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: BGR uint8 (H, W, 3)."""

    index: int  # position in the stream, from 0, gap-free as delivered by the source
    captured_at: float  # time.monotonic() when the source produced it
    image: np.ndarray


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
