"""A bounded on-disk spool for telemetry and events, and their per-channel ``seq`` counters.

Every reliable message is written here first (one small file per message:
temp + fsync + rename) and deleted when the broker acknowledges it (PUBACK),
so nothing is lost across broker outages or agent restarts, and delivery
follows the spool's order.

Files are named ``{order:016d}.{channel}.{seq}.json``; ``order`` is global, so
the delivery order across channels is the order messages were produced.
``seq`` runs per channel, persisted in ``seq.{channel}``; at start-up it
continues after the larger of that file and anything still spooled, so a
crash between spooling and persisting the counter neither repeats nor skips a seq.

When the spool holds ``max_messages``, the oldest *telemetry* is dropped
(counted; :meth:`Spool.take_dropped` reports it into the next window); events
are kept even then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lineside_common.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

RELIABLE_CHANNELS = ("telemetry", "events")


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled message."""

    order: int
    channel: str
    seq: int
    path: Path

    def read(self) -> bytes | None:
        """The payload, or None if the file is gone (dropped or already acknowledged)."""
        try:
            return self.path.read_bytes()
        except OSError:
            return None


def _parse_name(name: str) -> tuple[int, str, int] | None:
    parts = name.split(".")
    if len(parts) != 4 or parts[3] != "json" or parts[1] not in RELIABLE_CHANNELS:
        return None
    try:
        return int(parts[0]), parts[1], int(parts[2])
    except ValueError:
        return None


class Spool:
    """Thread-safe: any thread appends; the publisher reads in order and removes on PUBACK."""

    def __init__(self, directory: Path, *, max_messages: int = 10000) -> None:
        self.directory = Path(directory)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._entries: dict[int, SpoolEntry] = {}
        self._dropped = 0
        self._dropped_total = 0
        next_seq = {ch: 0 for ch in RELIABLE_CHANNELS}
        order = 0
        for p in self.directory.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # a write that never finished
                continue
            parsed = _parse_name(p.name)
            if parsed is None:
                continue
            o, ch, seq = parsed
            self._entries[o] = SpoolEntry(o, ch, seq, p)
            order = max(order, o + 1)
            next_seq[ch] = max(next_seq[ch], seq + 1)
        for ch in RELIABLE_CHANNELS:
            next_seq[ch] = max(next_seq[ch], self._read_counter(ch))
        self._next_seq = next_seq
        self._next_order = order
        if self._entries:
            log.info("spool %s holds %d undelivered messages", self.directory, len(self._entries))

    # -- seq counters
    def _counter_path(self, channel: str) -> Path:
        return self.directory / f"seq.{channel}"

    def _read_counter(self, channel: str) -> int:
        try:
            return int(self._counter_path(channel).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def next_seq(self, channel: str) -> int:
        """The seq the next message on ``channel`` will get."""
        with self._lock:
            return self._next_seq[channel]

    # -- writing
    def append(self, channel: str, make: Callable[[int], bytes]) -> tuple[int, bytes]:
        """Assign the next ``seq`` on ``channel``, build the payload with ``make(seq)``, spool it durably."""
        if channel not in RELIABLE_CHANNELS:
            raise ValueError(f"not a spooled channel: {channel}")
        with self._lock:
            seq = self._next_seq[channel]
            payload = make(seq)
            order = self._next_order
            path = self.directory / f"{order:016d}.{channel}.{seq}.json"
            atomic_write_bytes(path, payload, mode=0o640)
            self._entries[order] = SpoolEntry(order, channel, seq, path)
            self._next_order = order + 1
            self._next_seq[channel] = seq + 1
            # After the message: a crash in between is healed at start-up from the spooled file.
            atomic_write_bytes(self._counter_path(channel), str(seq + 1).encode(), mode=0o640)
            self._enforce_limit()
            self._changed.notify_all()
        return seq, payload

    def _enforce_limit(self) -> None:
        excess = len(self._entries) - self.max_messages
        if excess <= 0:
            return
        for order in sorted(self._entries):
            if excess <= 0:
                break
            entry = self._entries[order]
            if entry.channel != "telemetry":
                continue
            entry.path.unlink(missing_ok=True)
            del self._entries[order]
            self._dropped += 1
            self._dropped_total += 1
            excess -= 1
        if excess > 0:
            log.warning("spool over its limit with %d events (events are kept)", len(self._entries))

    # -- reading and acknowledging
    def pending(self, after: int = -1, limit: int = 1000) -> list[SpoolEntry]:
        """Up to ``limit`` entries with ``order > after``, oldest first."""
        with self._lock:
            keys = sorted(k for k in self._entries if k > after)[:limit]
            return [self._entries[k] for k in keys]

    def remove(self, order: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            entry = self._entries.pop(order, None)
            if entry is not None:
                entry.path.unlink(missing_ok=True)
                self._changed.notify_all()

    def wait_empty(self, timeout: float) -> bool:
        """Block until the spool is empty or ``timeout`` passes; True when empty."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._entries, timeout=timeout)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def take_dropped(self) -> int:
        """Telemetry dropped since the last call (for the next window's ``spool_dropped``)."""
        with self._lock:
            n, self._dropped = self._dropped, 0
            return n

    @property
    def dropped_total(self) -> int:
        with self._lock:
            return self._dropped_total
