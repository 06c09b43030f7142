"""The line's state as the agent knows it: parsed from its sources, held in one place.

Sources (configured per device in ``[line]``):

- ``mqtt``  — a topic on the plant broker (default ``{root}/devices/{id}/line``), retained by the
  line controller so a restarted agent learns the state at once;
- ``local`` — a program on the same box writes a line to the local output socket
  (:mod:`edge_agent.local_output`).

Both carry the same payload: a bare state name (``Execute``) or JSON
``{"state": "Execute", "changeover": false}``. State names are PackML's (OPC 30050), case-insensitive.

A value we cannot read leaves the state ``unknown`` (the update window then defers, see
:mod:`edge_agent.update_window`) and is reported by the caller as a ``line.state`` event with the
error's ``reason`` — never a crash, never a guess.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.update_window import LINE_STATES, UNKNOWN
from lineside_common.errors import LineStateError

MAX_LINE_STATE_BYTES = 1024


@dataclass(frozen=True, slots=True)
class LineReading:
    """One reading of the line: a PackML-like state (or ``unknown``) and the changeover flag."""

    state: str
    changeover: bool = False


def parse_line_state(payload: bytes | str) -> LineReading:
    """``Execute`` / ``"idle"`` / ``{"state": "Held", "changeover": true}`` → LineReading.

    Raises LineStateError (reason ``too_large``, ``not_json``, ``bad_shape`` or ``bad_value``).
    """
    raw = payload.encode() if isinstance(payload, str) else payload
    if len(raw) > MAX_LINE_STATE_BYTES:
        raise LineStateError(f"line state of {len(raw)} bytes is too large", reason="too_large")
    try:
        text = raw.decode().strip()
    except UnicodeDecodeError as exc:
        raise LineStateError("line state is not UTF-8 text", reason="not_json") from exc
    value: Any
    if text[:1] in ("{", '"', "["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LineStateError(f"line state is not JSON: {exc.msg}", reason="not_json") from exc
    else:
        value = text
    changeover: Any = False
    if isinstance(value, dict):
        changeover = value.get("changeover", False)
        value = value.get("state")
        if not isinstance(changeover, bool):
            raise LineStateError("'changeover' must be true or false", reason="bad_shape")
        if value is None and changeover:
            # A changeover flag alone is enough: changeovers happen outside Execute by definition.
            return LineReading(UNKNOWN, True)
    if not isinstance(value, str):
        raise LineStateError('line state must be a state name or {"state": ...}', reason="bad_shape")
    state = value.strip().lower()
    if state not in LINE_STATES:
        raise LineStateError(
            f"{value[:40]!r} is not a line state (known: {', '.join(LINE_STATES)})", reason="bad_value"
        )
    return LineReading(state, changeover)


@dataclass(frozen=True, slots=True)
class LineSnapshot:
    """What the board holds: the reading, where it came from, and when it last changed (monotonic)."""

    state: str
    changeover: bool
    source: str
    since: float


Listener = Callable[[LineSnapshot, LineSnapshot], None]


class LineStateBoard:
    """The current line state, shared by the sources (writers) and the updater and outputs (readers).

    Thread-safe. ``wait_change(timeout)`` lets a deferred swap sleep until the line moves.
    Listeners run on the writer's thread, outside the lock; they must be quick.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._snap = LineSnapshot(UNKNOWN, False, "", clock())
        self._version = 0
        self._listeners: list[Listener] = []

    def add_listener(self, cb: Listener) -> None:
        """Call ``cb(old, new)`` on every change."""
        self._listeners.append(cb)

    def snapshot(self) -> LineSnapshot:
        with self._cond:
            return self._snap

    def set(self, reading: LineReading, source: str) -> bool:
        """Record a reading; True (and listeners called) when state or changeover changed."""
        with self._cond:
            old = self._snap
            if (old.state, old.changeover) == (reading.state, reading.changeover):
                return False
            new = LineSnapshot(reading.state, reading.changeover, source, self._clock())
            self._snap = new
            self._version += 1
            self._cond.notify_all()
        for cb in list(self._listeners):
            cb(old, new)
        return True

    def set_unknown(self, source: str) -> bool:
        """The source said something we cannot read, or went away: the state is unknown."""
        return self.set(LineReading(UNKNOWN, False), source)

    def version(self) -> int:
        with self._cond:
            return self._version

    def wait_change(self, since_version: int, timeout_s: float) -> int:
        """Block until the version differs from ``since_version`` or ``timeout_s`` passes; the version."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != since_version, timeout=timeout_s)
            return self._version

    def poke(self) -> None:
        """Wake waiters without a change (a rollback cancelling a deferred swap)."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()
