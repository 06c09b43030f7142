"""Labels for samples, pure: import rows from a labelling tool, and a labelled dataset's identity.

- :func:`parse_rows` reads CSV (header ``id`` or ``device_id,sample_id``, and ``label``) or JSONL
  (one object per line with the same keys) into :class:`LabelRow` s; the first malformed row
  raises :class:`LabelError` naming its line, so an import is all or nothing.
- :func:`dataset_hash` is a dataset's identity: SHA-256 over its sorted ``(image sha256, label)``
  pairs, never over times or ids, so the same frames with the same labels hash the same however
  often and in whatever order they are exported.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from lineside_common.errors import FleetError

LabelReason = Literal["malformed", "unknown_sample", "unknown_label"]
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,127}$")


class LabelError(FleetError, ValueError):
    """A label or import row that cannot be used; ``reason`` is typed, never branch on the text.

    Still a ValueError, as before it joined the one hierarchy, for callers that catch that."""

    def __init__(self, message: str, *, reason: LabelReason) -> None:
        super().__init__(message, reason=reason)
        self.reason: LabelReason = reason


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One label for one sample: by database id, or by (device, sample id)."""

    label: str
    id: int | None = None
    device_id: str | None = None
    sample_id: str | None = None


def valid_label(label: str) -> bool:
    """Labels become folder names in exports: letters, digits, space, ``._+-``; no path parts."""
    return bool(_LABEL.match(label)) and label not in (".", "..")


def _row(obj: dict[str, object], where: str) -> LabelRow:
    label = obj.get("label")
    if not isinstance(label, str) or not valid_label(label.strip()):
        raise LabelError(f"{where}: no usable label", reason="malformed")
    raw_id = obj.get("id")
    if raw_id not in (None, ""):
        try:
            pk = int(str(raw_id))
        except ValueError:
            raise LabelError(f"{where}: id {raw_id!r} is not a number", reason="malformed") from None
        return LabelRow(label.strip(), id=pk)
    dev, sid = obj.get("device_id"), obj.get("sample_id")
    if isinstance(dev, str) and dev and isinstance(sid, str) and sid:
        return LabelRow(label.strip(), device_id=dev, sample_id=sid)
    raise LabelError(f"{where}: give id, or device_id and sample_id", reason="malformed")


def parse_rows(text: str, fmt: Literal["csv", "jsonl"]) -> list[LabelRow]:
    """All rows of an import file, or LabelError for the first bad one (nothing partial)."""
    rows: list[LabelRow] = []
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise LabelError(f"line {n}: not JSON", reason="malformed") from None
            if not isinstance(obj, dict):
                raise LabelError(f"line {n}: not an object", reason="malformed")
            rows.append(_row(obj, f"line {n}"))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "label" not in reader.fieldnames:
            raise LabelError("line 1: the header needs a label column", reason="malformed")
        for n, rec in enumerate(reader, 2):
            if None in rec:  # more cells than the header names
                raise LabelError(f"line {n}: more cells than the header", reason="malformed")
            rows.append(_row(dict(rec), f"line {n}"))
    if not rows:
        raise LabelError("no rows", reason="malformed")
    return rows


def dataset_hash(pairs: Iterable[tuple[str, str]]) -> str:
    """SHA-256 (hex) over the sorted, distinct ``(image sha256, label)`` pairs."""
    h = hashlib.sha256()
    for image_sha, label in sorted(set(pairs)):
        h.update(f"{image_sha}\t{label}\n".encode())
    return h.hexdigest()
