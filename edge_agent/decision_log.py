"""The agent's bounded log of recent decisions, and the join of truth to them.

Where truth is joined: on the device. The fleet never sees individual decisions (the
``decisions`` topic is a QoS 0 local output), so the agent keeps the last ``capacity`` decisions
(id → model ``name@version``, label, dimensions) in memory and in two append-only segment files
under its state directory (written once per telemetry window by the telemetry thread, so a
restart keeps them; a crash loses at most the last unwritten window, which truth then reports as
``unknown_decision``). A truth message names a decision id; :func:`judge` (pure) turns the logged
decision and the truth into a ``truth.joined`` event (correct or not, dimension error, and the
model that decided) or a ``truth.rejected`` one (unknown decision, already judged). The fleet
stores those events and counts field accuracy from them (fleet_server/accuracy.py), so
accuracy per model version is exact across restarts and swaps: each decision carries its model.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.messages import Truth

log = logging.getLogger(__name__)

SEGMENTS = ("decisions.0.jsonl", "decisions.1.jsonl")


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """What the agent decided: the model (``name@version``), the label, the dimensions if any."""

    model: str
    label: str | None
    dimensions_mm: tuple[float, float] | None


def judge(
    decision_id: str, entry: LoggedDecision | None, truth: Truth, *, judged: bool
) -> tuple[str, dict[str, Any]]:
    """``(event kind, event data)`` for one truth message against the logged decision. Pure."""
    base: dict[str, Any] = {"decision_id": decision_id, "truth_id": truth.truth_id, "source": truth.source}
    if entry is None:
        return "truth.rejected", {**base, "reason": "unknown_decision"}
    if judged:
        return "truth.rejected", {**base, "reason": "duplicate", "model": entry.model}
    data: dict[str, Any] = {
        **base,
        "model": entry.model,
        "predicted": entry.label,
        "label": truth.label,
        "correct": entry.label == truth.label,
    }
    if truth.dimensions_mm is not None:
        data["dimensions_mm"] = list(truth.dimensions_mm)
        if entry.dimensions_mm is not None:
            data["predicted_dimensions_mm"] = list(entry.dimensions_mm)
            # Mean absolute error over width and height, for this one package.
            data["dimension_abs_error_mm"] = (
                abs(entry.dimensions_mm[0] - truth.dimensions_mm[0])
                + abs(entry.dimensions_mm[1] - truth.dimensions_mm[1])
            ) / 2.0
    return "truth.joined", data


class DecisionLog:
    """The last ``capacity`` decisions, in memory and on disk. ``record`` is the per-frame path."""

    def __init__(self, directory: Path | None, capacity: int = 20000) -> None:
        self.directory = directory
        self.capacity = max(2, capacity)
        self._entries: dict[str, LoggedDecision] = {}
        self._order: deque[str] = deque()
        self._judged: set[str] = set()
        self._pending: list[tuple[str, LoggedDecision]] = []
        self._pending_judged: list[str] = []
        self._lock = threading.Lock()
        self._seg = 0
        self._seg_lines = 0
        if directory is not None:
            self._load(directory)

    def _load(self, directory: Path) -> None:
        paths = [directory / s for s in SEGMENTS if (directory / s).exists()]
        paths.sort(key=lambda p: p.stat().st_mtime_ns)
        for path in paths:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        if "t" in row:
                            self._judged.add(str(row["t"]))
                            continue
                        dims = row.get("d")
                        self._add(
                            str(row["id"]),
                            LoggedDecision(
                                str(row["m"]),
                                row.get("l"),
                                None if dims is None else (float(dims[0]), float(dims[1])),
                            ),
                        )
                    except (ValueError, KeyError, TypeError, IndexError):
                        continue  # a line torn by a crash mid-write: that decision is simply unknown
        if paths:
            self._seg = SEGMENTS.index(paths[-1].name)
            with open(paths[-1], "rb") as f:
                self._seg_lines = sum(1 for _ in f)

    def _add(self, decision_id: str, entry: LoggedDecision) -> None:
        if decision_id not in self._entries:
            self._order.append(decision_id)
        self._entries[decision_id] = entry
        while len(self._order) > self.capacity:
            old = self._order.popleft()
            self._entries.pop(old, None)
            self._judged.discard(old)

    def record(
        self, decision_id: str, model: str, label: str | None, dims: tuple[float, float] | None
    ) -> None:
        """One decision (inference thread): an uncontended lock and two appends."""
        entry = LoggedDecision(model, label, dims)
        with self._lock:
            self._add(decision_id, entry)
            if self.directory is not None:
                self._pending.append((decision_id, entry))

    def join(self, truth: Truth) -> tuple[str, dict[str, Any]]:
        """Judge one truth message (MQTT thread); a joined decision is not judged twice."""
        with self._lock:
            entry = self._entries.get(truth.decision_id)
            kind, data = judge(truth.decision_id, entry, truth, judged=truth.decision_id in self._judged)
            if kind == "truth.joined":
                self._judged.add(truth.decision_id)
                if self.directory is not None:
                    self._pending_judged.append(truth.decision_id)
        return kind, data

    def flush(self) -> None:
        """Append what was recorded since the last flush to the current segment (telemetry thread).

        Two segments of ``capacity // 2`` lines each: when the current one is full the other is
        truncated and written next, so the files hold at least the last ``capacity // 2``
        decisions and never more than ``capacity`` lines (plus judged marks).
        """
        if self.directory is None:
            return
        with self._lock:
            pending, self._pending = self._pending, []
            judged, self._pending_judged = self._pending_judged, []
        if not pending and not judged:
            return
        lines = [
            json.dumps(
                {
                    "id": i,
                    "m": e.model,
                    "l": e.label,
                    "d": None if e.dimensions_mm is None else list(e.dimensions_mm),
                },
                separators=(",", ":"),
            )
            for i, e in pending
        ]
        lines += [json.dumps({"t": i}, separators=(",", ":")) for i in judged]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._seg_lines >= self.capacity // 2:
                self._seg = 1 - self._seg
                self._seg_lines = 0
                (self.directory / SEGMENTS[self._seg]).write_bytes(b"")
            with open(self.directory / SEGMENTS[self._seg], "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            self._seg_lines += len(lines)
        except OSError as exc:
            log.warning("could not write the decision log: %s", exc)
