"""Sample routes: devices upload the frames they kept; operators list, show, fetch and purge them.

``PUT /api/v1/devices/{device_id}/samples/{sample_id}`` takes a device token, and only the token
issued to that device (another robot's token: 403, nothing stored). Its body is the sample's
metadata JSON on one line, a newline, then the JPEG (``application/x-lineside-sample``), at most
``sample_max_bytes`` (413). Malformed metadata or a non-JPEG image: 422. A sample already
stored answers 200 with ``stored: false``; a new one 201. The other routes need a viewer token
(purge: admin).
"""

from __future__ import annotations

import hmac
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from edge_agent.messages import CaptureCommand, dump
from fleet_server import auth
from fleet_server.api import Admin, Viewer, _error, _known_labels, _svc, truth_writer
from fleet_server.db import TokenRow
from fleet_server.device_tokens import DEVICE_ROLE
from fleet_server.labels import LabelError, LabelRow
from fleet_server.samples import SampleError, SampleFilter, SampleStore, parse_upload

_bearer = HTTPBearer(auto_error=False, description="the device's own token (`fleet devices token DEVICE`)")
_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_STATUS = {"malformed": 422, "too_large": 413, "wrong_device": 403}

router = APIRouter(prefix="/api/v1", tags=["samples"])


def store_of(request: Request) -> SampleStore:
    store: SampleStore = _svc(request).samples
    return store


def uploading_device(
    request: Request,
    device_id: Annotated[str, PathParam(pattern=_ID)],
    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The device the token was issued to, which must be the one in the URL."""
    if cred is None or cred.scheme.lower() != "bearer" or not cred.credentials:
        raise HTTPException(401, {"message": "missing bearer token"}, headers={"WWW-Authenticate": "Bearer"})
    digest = auth.hash_token(cred.credentials)
    with _svc(request).db.session() as s:
        row = s.scalar(select(TokenRow).where(TokenRow.sha256 == digest))
        found = None if row is None else (row.role, row.name, row.sha256)
    if found is None or not hmac.compare_digest(found[2], digest):
        raise HTTPException(401, {"message": "unknown token"}, headers={"WWW-Authenticate": "Bearer"})
    role, name, _ = found
    if role != DEVICE_ROLE:
        raise _error(403, "samples are uploaded with a device's own token", reason="not_a_device")
    if name != device_id:
        raise _error(403, "this token belongs to another device", reason="wrong_device")
    return device_id


Device = Annotated[str, Depends(uploading_device)]


@router.put("/devices/{device_id}/samples/{sample_id}", status_code=201)
async def samples_upload(
    request: Request, device_id: Device, sample_id: Annotated[str, PathParam(pattern=_ID)]
) -> Response:
    """Store one sample (idempotent by sample id)."""
    svc = _svc(request)
    limit = svc.settings.sample_max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _error(413, f"a sample of {declared} bytes is over the {limit}-byte limit", reason="too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _error(413, f"a sample over the {limit}-byte limit", reason="too_large")
    try:
        upload = parse_upload(bytes(body), device_id=device_id, sample_id=sample_id)
        sample, stored = await run_in_threadpool(store_of(request).add, upload)
    except SampleError as exc:
        raise _error(_STATUS[exc.reason], str(exc), reason=exc.reason) from exc
    from fleet_server.api import jsonable

    return JSONResponse(
        status_code=201 if stored else 200, content=jsonable({"stored": stored, "sample": sample})
    )


def _filter(
    device: str | None, since: datetime | None, until: datetime | None, label: str | None
) -> SampleFilter:
    return SampleFilter(device_id=device, since=since, until=until, label=label)


@router.get("/samples")
def samples_list(
    request: Request,
    _: Viewer,
    device: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    label: str | None = None,
    labelled: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Samples, newest first, filtered by device, time taken (``since`` ≤ t < ``until``), the
    model's label and whether a person has labelled them (``labelled``)."""
    flt = _filter(device, since, until, label)
    if labelled is not None:
        flt = SampleFilter(flt.device_id, flt.since, flt.until, flt.label, labelled)
    store = store_of(request)
    return {"total": store.count(flt), "samples": store.query(flt, limit=limit, offset=offset)}


@router.get("/samples/{sample_pk}")
def samples_show(request: Request, _: Viewer, sample_pk: int) -> dict[str, Any]:
    """One sample's metadata."""
    sample = store_of(request).get(sample_pk)
    if sample is None:
        raise _error(404, f"no sample {sample_pk}")
    return sample


@router.get("/samples/{sample_pk}/image", response_class=FileResponse)
def samples_image(request: Request, _: Viewer, sample_pk: int) -> FileResponse:
    """One sample's JPEG."""
    store = store_of(request)
    sample = store.get(sample_pk)
    if sample is None:
        raise _error(404, f"no sample {sample_pk}")
    path = store.path_of(sample["image_sha256"])
    if not path.is_file():
        raise _error(404, f"sample {sample_pk}'s image is missing from the store")
    return FileResponse(path, media_type="image/jpeg")


class PurgeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    label: str | None = None
    all: bool = False


class LabelItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Annotated[str, Field(min_length=1, max_length=128)]
    id: int | None = None
    device_id: str | None = None
    sample_id: str | None = None


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: Annotated[list[LabelItem], Field(min_length=1, max_length=100_000)]
    new_labels: bool = Field(default=False, description="accept labels no model or sample has yet")


@router.post("/samples/labels")
def samples_label(
    request: Request, body: LabelBody, role: Annotated[str, Depends(truth_writer)]
) -> dict[str, Any]:
    """Label samples (one, or an import's rows), all or nothing: an unknown sample (404,
    ``unknown_sample``) or label (422, ``unknown_label``, unless ``new_labels``) stores nothing."""
    rows = []
    for n, it in enumerate(body.labels, 1):
        if it.id is None and (not it.device_id or not it.sample_id):
            raise _error(422, f"row {n}: give id, or device_id and sample_id", reason="malformed")
        rows.append(LabelRow(it.label.strip(), id=it.id, device_id=it.device_id, sample_id=it.sample_id))
    try:
        done = store_of(request).apply_labels(
            rows, by=role, known=_known_labels(_svc(request)), allow_new=body.new_labels
        )
    except LabelError as exc:
        status = {"unknown_sample": 404, "unknown_label": 422, "malformed": 422}[exc.reason]
        raise _error(status, str(exc), reason=exc.reason) from None
    return {"labelled": len(done), "samples": done}


@router.get("/samples/labels/known")
def samples_known_labels(request: Request, _: Viewer) -> list[str]:
    """The labels a person can pick: every released model's and every label a sample has."""
    return sorted(_known_labels(_svc(request)) | store_of(request).known_labels())


@router.post("/samples/purge")
def samples_purge(request: Request, _: Admin, body: PurgeBody) -> dict[str, int]:
    """Remove the samples matching the filter (at least one, or ``all``) and their unreferenced files."""
    flt = _filter(body.device, body.since, body.until, body.label)
    if flt.empty and not body.all:
        raise _error(
            422, "purge needs a filter (device, since, until, label) or all: true", reason="no_filter"
        )
    return store_of(request).purge(flt)


class CaptureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: Annotated[int, Field(ge=1, le=1000)] = 10
    low_confidence: bool = False


@router.post("/devices/{device_id}/capture", status_code=202)
def samples_capture(
    request: Request, _: Admin, device_id: Annotated[str, PathParam(pattern=_ID)], body: CaptureRequest
) -> dict[str, Any]:
    """Ask a device for its next ``count`` frames (or low-confidence frames), within its quotas.

    Sent over MQTT; the device answers with a ``capture`` event, or ``command.rejected`` (reason
    ``capture_disabled`` where its config says ``capture = false``), carrying this ``cmd_id``.
    """
    svc = _svc(request)
    if svc.controller.publisher is None:
        raise _error(503, "no MQTT link: the command cannot be sent now")
    cmd_id = "c" + uuid.uuid4().hex[:12]
    cmd = CaptureCommand(
        cmd_id=cmd_id, count=body.count, low_confidence=body.low_confidence, issued_at=datetime.now(UTC)
    )
    svc.controller.publisher.publish(svc.topics.device(device_id, "cmd"), dump(cmd))
    return {
        "device_id": device_id,
        "cmd_id": cmd_id,
        "count": body.count,
        "low_confidence": body.low_confidence,
    }


def install(app: FastAPI) -> None:
    """Add the sample routes."""
    app.include_router(router)
