"""Decision ids: unique on one device across restarts, cheap enough for every frame.

An id is ``<boot>-<n>``: ``boot`` is 8 random hex digits drawn when the agent starts (a collision
between two boots of one device is a 1-in-4-billion event), ``n`` counts decisions in this boot.
This is the one place that defines the format, so a later change (a persisted boot counter, a
time-ordered id) has one home.
"""

from __future__ import annotations

import itertools
import secrets


class DecisionIds:
    """Hands out decision ids for one run of the agent (the inference thread calls :meth:`next`)."""

    def __init__(self, boot_id: str | None = None) -> None:
        self.boot_id = boot_id or secrets.token_hex(4)
        self._counter = itertools.count(1)

    def next(self) -> str:
        """The next id, e.g. ``3f9a12c0-42``."""
        return f"{self.boot_id}-{next(self._counter)}"
