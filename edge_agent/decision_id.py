"""Decision ids: unique on one device across restarts and model swaps.

An id is ``BBBBBB-NNNNNNNNNNNN``: the boot number (persisted in the state dir, one more at every
start, written durably before the first decision) and a counter from 0 within that boot. Both
parts are zero-padded so ids sort in the order they were made, which the sample ring relies on.
Samples use their decision's id as the sample id; truth (issue 17) refers to decisions by it.
This is the only place ids are made.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from lineside_common.atomic import atomic_write_bytes
from lineside_common.errors import StoreError

BOOT_FILE = "boot_id"
DECISION_ID = re.compile(r"^[0-9]{6}-[0-9]{12}$")


def next_boot(state_dir: Path) -> int:
    """Read the last boot number in ``state_dir``, store the next one durably, return it."""
    path = state_dir / BOOT_FILE
    try:
        last = int(path.read_text().strip() or "0")
    except FileNotFoundError:
        last = 0
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the boot id in {path}: {exc}") from exc
    boot = last + 1
    try:
        atomic_write_bytes(path, f"{boot}\n".encode())
    except OSError as exc:
        raise StoreError(f"cannot write the boot id {path}: {exc.strerror}") from exc
    return boot


class DecisionIds:
    """Makes the ids of one boot: ``next()`` is thread-safe and cheap (the hot path calls it)."""

    def __init__(self, boot: int) -> None:
        if not 0 < boot < 1_000_000:
            raise ValueError("boot number out of range")
        self.boot = boot
        self._prefix = f"{boot:06d}-"
        self._counter = itertools.count()  # next() on itertools.count is atomic under the GIL

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> DecisionIds:
        """A new boot in ``state_dir``."""
        return cls(next_boot(state_dir))

    def next(self) -> str:
        """The next decision id."""
        return f"{self._prefix}{next(self._counter):012d}"


def valid_decision_id(value: str) -> bool:
    """Whether ``value`` is shaped like an id this module makes."""
    return DECISION_ID.match(value) is not None
