"""Decision ids: unique on one device across restarts, cheap enough for every frame.

An id is ``<boot>-<n>``: ``n`` counts decisions in this run of the agent, and ``boot`` names the
run. With a state directory, ``boot`` is ``<number>.<4 random hex>``: the number is persisted
(atomically) and grows by one at every start, so two runs of one device never share a boot even
if the random part repeats, and the random part keeps ids apart if the state directory is ever
wiped and the number starts again. Without one (embedding, tests) it is 8 random hex digits.
A model swap does not restart the counter, so ids stay unique across swaps too; each decision
also names its model (``name@version``), which is what truth is joined on (see decision_log.py).
This is the one place that defines the format.
"""

from __future__ import annotations

import itertools
import secrets
from pathlib import Path

from edge_agent.atomic import atomic_write_bytes

BOOT_FILE = "decision-boot"


def next_boot(state_dir: Path) -> str:
    """Persist and return this run's boot id (``<n>.<hex>``); an unreadable file counts as 0."""
    path = Path(state_dir) / BOOT_FILE
    try:
        n = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        n = 0
    n += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, f"{n}\n".encode())
    return f"{n}.{secrets.token_hex(2)}"


class DecisionIds:
    """Hands out decision ids for one run of the agent (the inference thread calls :meth:`next`)."""

    def __init__(self, boot_id: str | None = None, *, state_dir: Path | None = None) -> None:
        if boot_id is None:
            boot_id = next_boot(state_dir) if state_dir is not None else secrets.token_hex(4)
        self.boot_id = boot_id
        self._counter = itertools.count(1)

    def next(self) -> str:
        """The next id, e.g. ``12.3f9a-42``."""
        return f"{self.boot_id}-{next(self._counter)}"
