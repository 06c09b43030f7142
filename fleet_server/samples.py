"""The fleet's sample store: JPEGs content-addressed under the data directory, indexed in the database.

``SampleStore.add`` validates one upload (:func:`parse_upload`: the metadata JSON on the first
line, then the JPEG), writes the JPEG as ``samples/<aa>/<sha256>.jpg`` (atomically; identical
bytes share one file) and inserts its row. A sample already stored for that (device, sample id)
stores nothing (``stored`` False): devices resend until they hear back. Retention (age and total
bytes, from settings) runs after each insert; :meth:`SampleStore.purge` removes rows by filter
and then every file no row refers to.

Errors are :class:`SampleError` with a typed ``reason``: ``malformed`` (422), ``too_large``
(413), ``wrong_device`` (403). One lock orders file writes against file removals within this
process, so a purge never removes a file an upload is about to refer to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from fleet_server.db import Database, SampleRow, utcnow
from fleet_server.labels import LabelError, LabelRow, valid_label
from lineside_common.atomic import atomic_write_bytes
from lineside_common.errors import FleetError

log = logging.getLogger(__name__)

SampleReason = Literal["malformed", "too_large", "wrong_device"]
_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class SampleError(FleetError):
    """An upload the store refuses; ``reason`` is what callers branch on."""

    def __init__(self, message: str, *, reason: SampleReason) -> None:
        super().__init__(message, reason=reason)
        self.reason: SampleReason = reason


class _Strict(BaseModel):
    # Newer agents may add fields; they are kept in the row's metadata, never guessed at.
    model_config = ConfigDict(extra="allow", frozen=True)


class SampleModel(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    sha256: Annotated[str, Field(max_length=64)] = ""


class SampleMeta(_Strict):
    """The metadata a device sends with a sample (edge_agent.sampling writes it)."""

    format: Literal[1]
    sample_id: Annotated[str, Field(pattern=_ID)]
    decision_id: Annotated[str, Field(min_length=1, max_length=64)]
    device_id: Annotated[str, Field(pattern=_ID)]
    taken_at: Annotated[float, Field(gt=0, lt=2**33)]  # Unix seconds
    reason: Annotated[str, Field(min_length=1, max_length=32)]
    model: SampleModel
    label: Annotated[str, Field(min_length=1, max_length=128)]
    confidence: Annotated[float, Field(ge=0, le=1)]
    probabilities: Annotated[list[float], Field(max_length=4096)] | None = None
    dimensions_mm: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None


@dataclass(frozen=True)
class Upload:
    meta: SampleMeta
    raw_meta: dict[str, Any]
    jpeg: bytes


def parse_upload(body: bytes, *, device_id: str, sample_id: str) -> Upload:
    """Split and validate an upload body; raise SampleError(reason="malformed") naming what is wrong."""
    head, sep, jpeg = body.partition(b"\n")
    if not sep:
        raise SampleError("the body must be the metadata JSON, a newline, then the JPEG", reason="malformed")
    try:
        raw = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError(f"the metadata is not JSON: {exc}", reason="malformed") from exc
    if not isinstance(raw, dict):
        raise SampleError("the metadata must be a JSON object", reason="malformed")
    try:
        meta = SampleMeta.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SampleError(f"metadata {where}: {err['msg']}", reason="malformed") from exc
    if meta.probabilities is not None and not all(math.isfinite(p) for p in meta.probabilities):
        raise SampleError("metadata probabilities: not finite", reason="malformed")
    if meta.device_id != device_id or meta.sample_id != sample_id:
        raise SampleError("the metadata names another device or sample than the URL", reason="malformed")
    if not jpeg.startswith(b"\xff\xd8\xff"):
        raise SampleError("the image is not a JPEG", reason="malformed")
    return Upload(meta, raw, jpeg)


@dataclass(frozen=True)
class SampleFilter:
    """Which samples (every field optional; all set ones must hold)."""

    device_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    label: str | None = None
    labelled: bool | None = None  # True: only samples with a true label; False: only without

    def apply(self, q: Any) -> Any:
        """``q`` (a ``select``) narrowed to the filter; typed Any: selects of any column tuple pass."""
        if self.device_id is not None:
            q = q.where(SampleRow.device_id == self.device_id)
        if self.since is not None:
            q = q.where(SampleRow.taken_at >= self.since)
        if self.until is not None:
            q = q.where(SampleRow.taken_at < self.until)
        if self.label is not None:
            q = q.where(SampleRow.label == self.label)
        if self.labelled is not None:
            q = q.where(
                SampleRow.true_label.is_not(None) if self.labelled else SampleRow.true_label.is_(None)
            )
        return q

    @property
    def empty(self) -> bool:
        return self.device_id is None and self.since is None and self.until is None and self.label is None


def row_dict(r: SampleRow) -> dict[str, Any]:
    """The API's view of one sample."""
    return {
        "id": r.id,
        "device_id": r.device_id,
        "sample_id": r.sample_id,
        "decision_id": r.decision_id,
        "taken_at": r.taken_at,
        "received_at": r.received_at,
        "reason": r.reason,
        "label": r.label,
        "confidence": r.confidence,
        "model": {"name": r.model_name, "version": r.model_version, "sha256": r.model_sha256},
        "image_sha256": r.image_sha256,
        "image_bytes": r.image_bytes,
        "meta": r.meta,
        "true_label": r.true_label,
        "labelled_at": r.labelled_at,
        "labelled_by": r.labelled_by,
    }


class SampleStore:
    """Samples on disk and in the database; see the module docstring."""

    def __init__(self, db: Database, directory: Path, *, max_total_bytes: int, max_age_s: float) -> None:
        self.db = db
        self.directory = directory
        self.max_total_bytes = max_total_bytes
        self.max_age_s = max_age_s
        self._lock = threading.Lock()

    def path_of(self, image_sha256: str) -> Path:
        return self.directory / image_sha256[:2] / f"{image_sha256}.jpg"

    def add(self, upload: Upload, *, now: datetime | None = None) -> tuple[dict[str, Any], bool]:
        """Store an upload; ``(sample, stored)`` — stored False when it was already there."""
        now = now or utcnow()
        meta = upload.meta
        with self.db.session() as s:
            existing = s.scalar(
                select(SampleRow).where(
                    SampleRow.device_id == meta.device_id, SampleRow.sample_id == meta.sample_id
                )
            )
            if existing is not None:
                return row_dict(existing), False
        sha = hashlib.sha256(upload.jpeg).hexdigest()
        raw = {k: v for k, v in upload.raw_meta.items()}
        row = SampleRow(
            device_id=meta.device_id,
            sample_id=meta.sample_id,
            decision_id=meta.decision_id,
            taken_at=datetime.fromtimestamp(meta.taken_at, UTC),
            received_at=now,
            reason=meta.reason,
            label=meta.label,
            confidence=meta.confidence,
            model_name=meta.model.name,
            model_version=meta.model.version,
            model_sha256=meta.model.sha256,
            image_sha256=sha,
            image_bytes=len(upload.jpeg),
            meta=raw,
        )
        with self._lock:
            path = self.path_of(sha)
            if not path.exists():
                atomic_write_bytes(path, upload.jpeg)
            try:
                with self.db.session() as s:
                    s.add(row)
                    s.flush()
                    out = row_dict(row)
            except IntegrityError:
                # The same sample raced in on another connection: it is stored once, by the other.
                with self.db.session() as s:
                    other = s.scalar(
                        select(SampleRow).where(
                            SampleRow.device_id == meta.device_id, SampleRow.sample_id == meta.sample_id
                        )
                    )
                    if other is None:
                        raise
                    return row_dict(other), False
        self.enforce_retention(now)
        return out, True

    def known_labels(self) -> set[str]:
        """Every true label some sample already has (a label added once is known from then on)."""
        with self.db.session() as s:
            return {str(x) for x in s.scalars(select(SampleRow.true_label).distinct()) if x is not None}

    def apply_labels(
        self, rows: list[LabelRow], *, by: str, known: set[str], allow_new: bool, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Label samples, all or nothing: every row's sample must exist and its label be known
        (``known`` plus the labels samples already have) unless ``allow_new``; else LabelError and
        nothing is stored."""
        now = now or utcnow()
        labels_ok = known | self.known_labels()
        with self.db.session() as s:
            found: list[tuple[SampleRow, str]] = []
            for n, r in enumerate(rows, 1):
                if not valid_label(r.label):
                    raise LabelError(f"row {n}: label {r.label!r} is not usable", reason="malformed")
                if r.label not in labels_ok and not allow_new:
                    raise LabelError(
                        f"row {n}: label {r.label!r} is not a known label (add it as a new label)",
                        reason="unknown_label",
                    )
                if r.id is not None:
                    row = s.get(SampleRow, r.id)
                else:
                    row = s.scalar(
                        select(SampleRow).where(
                            SampleRow.device_id == r.device_id, SampleRow.sample_id == r.sample_id
                        )
                    )
                if row is None:
                    what = r.id if r.id is not None else f"{r.device_id}/{r.sample_id}"
                    raise LabelError(f"row {n}: no sample {what}", reason="unknown_sample")
                found.append((row, r.label))
            for row, label in found:
                row.true_label, row.labelled_at, row.labelled_by = label, now, by
            s.flush()
            return [row_dict(row) for row, _ in found]

    def labelled_pairs(self) -> list[dict[str, Any]]:
        """Every labelled sample (for an export), oldest first."""
        flt = SampleFilter(labelled=True)
        with self.db.session() as s:
            q = flt.apply(select(SampleRow)).order_by(SampleRow.taken_at, SampleRow.id)
            return [row_dict(r) for r in s.scalars(q)]

    def query(self, flt: SampleFilter, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        with self.db.session() as s:
            q = flt.apply(select(SampleRow)).order_by(SampleRow.taken_at.desc(), SampleRow.id.desc())
            return [row_dict(r) for r in s.scalars(q.limit(limit).offset(offset))]

    def count(self, flt: SampleFilter) -> int:
        with self.db.session() as s:
            return int(s.scalar(flt.apply(select(func.count(SampleRow.id)))) or 0)

    def get(self, sample_pk: int) -> dict[str, Any] | None:
        with self.db.session() as s:
            r = s.get(SampleRow, sample_pk)
            return None if r is None else row_dict(r)

    def purge(self, flt: SampleFilter) -> dict[str, int]:
        """Remove the matching rows, then the files no row refers to any more."""
        with self.db.session() as s:
            rows = list(s.execute(flt.apply(select(SampleRow.id, SampleRow.image_sha256))))
        return self._delete(rows)

    def _delete(self, rows: list[Any]) -> dict[str, int]:
        # Rows first (committed), files after: a crash in between leaves an unreferenced file,
        # never a row without its image.
        ids = [r[0] for r in rows]
        shas = {r[1] for r in rows}
        with self._lock:
            with self.db.session() as s:
                for at in range(0, len(ids), 500):
                    s.execute(delete(SampleRow).where(SampleRow.id.in_(ids[at : at + 500])))
            with self.db.session() as s:
                still = set(s.scalars(select(SampleRow.image_sha256).where(SampleRow.image_sha256.in_(shas))))
            files = 0
            for sha in shas - still:
                with contextlib.suppress(FileNotFoundError):
                    self.path_of(sha).unlink()
                    files += 1
        return {"samples": len(ids), "files": files}

    def enforce_retention(self, now: datetime | None = None) -> dict[str, int]:
        """Remove samples older than the age limit, then the oldest while over the byte limit."""
        now = now or utcnow()
        removed = {"samples": 0, "files": 0}

        def add(r: dict[str, int]) -> None:
            removed["samples"] += r["samples"]
            removed["files"] += r["files"]

        add(self._purge_received_before(now - timedelta(seconds=self.max_age_s)))
        with self.db.session() as s:
            total = int(s.scalar(select(func.coalesce(func.sum(SampleRow.image_bytes), 0))) or 0)
            if total <= self.max_total_bytes:
                return removed
            cutoff: datetime | None = None
            for received, size in s.execute(
                select(SampleRow.received_at, SampleRow.image_bytes).order_by(SampleRow.received_at)
            ):
                total -= size
                cutoff = received
                if total <= self.max_total_bytes:
                    break
        if cutoff is not None:
            add(self._purge_received_before(cutoff + timedelta(microseconds=1)))
        if removed["samples"]:
            log.info("sample retention removed %d samples, %d files", removed["samples"], removed["files"])
        return removed

    def _purge_received_before(self, when: datetime) -> dict[str, int]:
        with self.db.session() as s:
            rows = list(
                s.execute(select(SampleRow.id, SampleRow.image_sha256).where(SampleRow.received_at < when))
            )
        return self._delete(rows) if rows else {"samples": 0, "files": 0}
