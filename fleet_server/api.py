"""HTTP API: ``/api/v1`` (bearer tokens), ``/tuf`` (signed files), ``/healthz``, ``/metrics``.

``/tuf/metadata/`` is open (signed, and a device needs it before anything else); ``/tuf/targets/``
(the bundles: the plant's models) needs a token of any role, a robot's ``device`` token included;
``/api/v1`` needs an admin or viewer token. Files are streamed (Starlette's ``FileResponse``,
which also answers ``Range``): a request never holds more than a chunk of a file in memory.

Errors are JSON with a one-line ``message`` (and ``detail``): 401 no/unknown token, 403 viewer
on a write or device token outside the targets, 404 unknown thing, 409 conflicting state, 413 upload too large, 400 signatures do
not verify, 422 invalid input (names the field).

Size: the HTTP routes for models, devices, rollouts, alerts and the TUF files, each a thin
handler over the services; samples and the dashboard have modules of their own.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from sqlalchemy import select

from edge_agent.manifest import parse_manifest
from edge_agent.messages import Truth, dump, valid_device_id
from fleet_server import accuracy, auth, device_tokens, metrics
from fleet_server.db import EventRow
from fleet_server.policy import (
    REQUEST_FIELDS,
    TEXT_FIELDS,
    parse_duration_s,
    policy_fields,
    resolve_policy,
)
from fleet_server.release_check import BundleRefusedError
from fleet_server.rollouts import StageSize, parse_stages
from fleet_server.services import Services
from fleet_server.shadow_phase import ShadowGates
from lineside_common.errors import (
    ConfigError,
    ConflictError,
    LinesideError,
    NotFoundError,
    StoreError,
    VerificationError,
)

_bearer = HTTPBearer(
    auto_error=False, description="a token from `fleet tokens create` (or data_dir/admin.token)"
)
_METADATA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.json$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def jsonable(obj: Any) -> Any:
    return jsonable_encoder(obj)


def _svc(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _error(status: int, message: str, **extra: Any) -> HTTPException:
    return HTTPException(status_code=status, detail={"message": message, **extra})


def _role(request: Request, cred: HTTPAuthorizationCredentials | None) -> str:
    if cred is None or cred.scheme.lower() != "bearer" or not cred.credentials:
        raise HTTPException(401, {"message": "missing bearer token"}, headers={"WWW-Authenticate": "Bearer"})
    role = auth.role_of(_svc(request).db, cred.credentials)
    if role is None:
        raise HTTPException(401, {"message": "unknown token"}, headers={"WWW-Authenticate": "Bearer"})
    return role


def reader(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """An operator's or a device's token: for the TUF targets only (a ``truth`` token, which only
    says what packages were, reads no model files)."""
    role = _role(request, cred)
    if role == "truth":
        raise _error(403, "a truth token posts truth and labels only", reason="role")
    return role


def viewer(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """An admin or viewer token (a device token reads targets and nothing else)."""
    role = _role(request, cred)
    if role not in ("admin", "viewer"):
        what = "posts truth and labels only" if role == "truth" else "reads /tuf/targets/ only"
        raise _error(403, f"a {role} token cannot use the API (it {what})", reason="role")
    return role


def admin(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """An admin token."""
    role = _role(request, cred)
    if role != "admin":
        raise _error(403, f"this needs an admin token (yours is a {role} token)")
    return role


def truth_writer(
    request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """Admin or ``truth`` role: who may say what a package really was (never a robot's token)."""
    role = _role(request, cred)
    if role not in ("admin", "truth"):
        raise _error(
            403, f"posting truth needs a truth or admin token (yours is a {role} token)", reason="role"
        )
    return role


Reader = Annotated[str, Depends(reader)]
Viewer = Annotated[str, Depends(viewer)]
Admin = Annotated[str, Depends(admin)]

# -- request bodies -----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DevicePatch(_Body):
    group: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    clear_group: bool = False
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = None


class DeviceCreate(_Body):
    device_id: Annotated[str, Field(min_length=1, max_length=64)]
    group: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = None


class RollbackRequest(_Body):
    devices: list[str] | None = None
    group: str | None = None
    reason: Annotated[str, Field(max_length=500)] = "operator rollback"


class TruthPost(_Body):
    device_id: str
    decision_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+-[0-9]+$")]
    label: Annotated[str, Field(min_length=1, max_length=64)]
    dimensions_mm: tuple[float, float] | None = None
    source: Annotated[str, Field(max_length=64)] = "api"


# Its policy fields, each optional, are Policy's REQUEST_FIELDS (fleet_server/policy.py; ``soak``
# and ``max_failure`` are text, as on the CLI); resolve_policy fills the rest. No docstring: it
# would become the OpenAPI schema's description.
class RolloutCreate(
    create_model(  # type: ignore[misc]  # a dynamic base: its fields are Policy's (fleet_server/policy.py)
        "_RolloutPolicyRequest", __base__=_Body, **policy_fields(REQUEST_FIELDS, optional=True)
    )
):
    model: Annotated[str, Field(description="NAME@VERSION", examples=["shapes@2.0.0"])]
    devices: list[str] | None = None
    group: str | None = None
    stages: str | None = Field(default=None, examples=["1,25%,100%"])
    soak: str | None = Field(default=None, examples=["60s"])
    max_failure: str | None = Field(default=None, examples=["10%"])
    shadow: str | None = Field(
        default=None,
        description="a shadow phase first, on this share of the devices (not counted in the stages)",
        examples=["25%", "2", "all"],
    )
    shadow_soak: str | None = Field(default=None, examples=["5m"])
    shadow_min_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    shadow_min_frames: Annotated[int, Field(ge=1)] | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        name, sep, version = v.partition("@")
        if not sep or not name or not version:
            raise ValueError("must be NAME@VERSION")
        return v


class AbortRequest(_Body):
    rollback: bool = False


class ResumeRequest(_Body):
    """Past an inconclusive verdict, resuming is an override: who and why are recorded."""

    by: Annotated[str, Field(max_length=64)] = ""
    why: Annotated[str, Field(max_length=500)] = ""


class TokenCreate(_Body):
    # Device tokens are bound to a device: POST /devices/{id}/token issues them.
    role: Literal["admin", "viewer", "truth"]
    name: Annotated[str, Field(max_length=64)] = ""


# -- helpers ------------------------------------------------------------------------------------


def _releases(svc: Services) -> list[Any]:
    return [] if svc.repo is None else list(svc.repo.releases())


def _find_release(svc: Services, name: str, version: str) -> Any | None:
    for info in _releases(svc):
        if info.name == name and info.version == version:
            return info
    return None


def _target_file(svc: Services, info: Any, file: str) -> Path | None:
    from fleet_server.tuf_repo import target_file_name

    meta = info.files.get(file)
    if meta is None:
        return None
    return Path(svc.repo.targets_dir) / target_file_name(meta["path"], meta["sha256"])


def _manifest_p50_drop(svc: Services, info: Any) -> float | None:
    """The release's own allowance (manifest ``drift.max_p50_drop``), if its manifest is readable."""
    path = _target_file(svc, info, "manifest.json")
    if path is None:
        return None
    try:
        return float(parse_manifest(path.read_bytes()).drift.max_p50_drop)
    except (OSError, LinesideError):
        return None


def _serve_file(path: Path, media_type: str) -> Response:
    """The file, streamed in chunks; ``FileResponse`` answers ``Range`` itself (206, 416)."""
    return FileResponse(path, media_type=media_type)


def _safe_join(base: Path, rel: str) -> Path:
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise _error(404, "no such file")
    path = (base / rel).resolve()
    if not path.is_relative_to(base.resolve()) or not path.is_file():
        raise _error(404, "no such file")
    return path


# -- routers ------------------------------------------------------------------------------------

open_router = APIRouter()
tuf_router = APIRouter(prefix="/tuf", tags=["tuf"])
v1 = APIRouter(prefix="/api/v1")


@open_router.get("/healthz", tags=["ops"])
def healthz(request: Request) -> dict[str, Any]:
    svc = _svc(request)
    link = svc.link
    return {
        "status": "ok",
        "mqtt_connected": bool(link and link.connected.is_set()),
        "controller": svc.controller.is_leader,
        "repository": svc.repo is not None,
    }


@open_router.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
def prometheus(request: Request) -> PlainTextResponse:
    svc = _svc(request)
    counts = svc.registry.counts()
    totals = vars(svc.ingest.totals)
    import time

    text = metrics.render(
        devices_total=counts["total"],
        devices_online=counts["online"],
        rollouts_by_state=svc.controller.counts_by_state(),
        ingest_totals={k: int(v) for k, v in totals.items()},
        alerts_open=svc.alerts.count_open(),
        ingest_backlog=svc.link.backlog if svc.link else 0,
        uptime_s=time.time() - svc.started_at,
    )
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@tuf_router.get("/metadata/{file}")
def tuf_metadata(file: str, request: Request) -> Response:
    svc = _svc(request)
    if svc.repo is None or not _METADATA_NAME.match(file):
        raise _error(404, "no such metadata file")
    # targets.json/snapshot.json: the published versions (what timestamp.json leads to).
    path = _safe_join(Path(svc.repo.metadata_dir), svc.repo.metadata_file(file).name)
    return _serve_file(path, "application/json")


@tuf_router.get("/targets/{path:path}")
def tuf_target(path: str, request: Request, _: Reader) -> Response:
    """A signed release file (Range supported): any token, a robot's device token included."""
    svc = _svc(request)
    if svc.repo is None:
        raise _error(404, "no repository")
    return _serve_file(_safe_join(Path(svc.repo.targets_dir), path), "application/octet-stream")


# models


@v1.get("/models", tags=["models"])
def models_list(request: Request, _: Viewer) -> list[dict[str, Any]]:
    return [info.to_dict() for info in _releases(_svc(request))]


@v1.get("/models/{name}/{version}", tags=["models"])
def models_show(name: str, version: str, request: Request, _: Viewer) -> dict[str, Any]:
    svc = _svc(request)
    info = _find_release(svc, name, version)
    if info is None:
        raise _error(404, f"no release {name}@{version}")
    out: dict[str, Any] = info.to_dict()
    path = _target_file(svc, info, "manifest.json")
    if path is not None and path.exists():
        out["manifest"] = json.loads(path.read_bytes())
    return out


@v1.post("/models", tags=["models"], status_code=201)
async def models_upload(request: Request, _: Admin) -> dict[str, Any]:
    """Upload a release signed offline by `fleet release`: ``{"targets": {...}, "files": {"NAME/VERSION/FILE": base64}}``."""
    svc = _svc(request)
    if svc.repo is None:
        raise _error(503, "this server has no TUF repository (set online_keys_dir)")
    limit = svc.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _error(413, f"upload of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _error(413, f"upload is over the {limit}-byte limit")
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _error(422, f"body is not JSON: {exc}") from exc
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("targets"), dict)
        or not isinstance(raw.get("files"), dict)
    ):
        raise _error(
            422,
            'body must be {"targets": <signed targets metadata>, "files": {"NAME/VERSION/FILE": "<base64>"}}',
        )
    files: dict[str, bytes] = {}
    for path, b64 in raw["files"].items():
        if not isinstance(b64, str):
            raise _error(422, f"files.{path}: must be a base64 string")
        try:
            files[path] = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _error(422, f"files.{path}: not base64 ({exc})") from exc
    signed = json.dumps(raw["targets"]).encode()
    try:
        info = svc.repo.accept_release(signed, files)
    except VerificationError as exc:
        raise _error(400, f"release refused: {exc}", error="verification_failed") from exc
    except BundleRefusedError as exc:
        # Key material or a bundle no device could run: refused here too, whatever the client checked.
        raise _error(
            422, f"release refused: {exc}", error="bundle_refused", reason=exc.reason, file=exc.file
        ) from exc
    except ConfigError as exc:
        # The server's own online keys are missing or unreadable: nothing was stored; fix and retry.
        raise _error(503, f"release not stored: {exc}", error="online_keys") from exc
    except StoreError as exc:
        # 507 Insufficient Storage: nothing was stored; free space and upload again.
        raise _error(507, f"release not stored: {exc}", error="storage") from exc
    except LinesideError as exc:
        raise _error(422, f"release refused: {exc}") from exc
    out: dict[str, Any] = info.to_dict()
    return out


@v1.get("/artifacts/{sha256}", tags=["models"])
def artifact(sha256: str, request: Request, _: Viewer) -> Response:
    """A released file by its SHA-256 (Range supported, for resumable downloads)."""
    svc = _svc(request)
    if not _SHA256.match(sha256):
        raise _error(422, "sha256 must be 64 lower-case hex digits")
    for info in _releases(svc):
        for file, meta in info.files.items():
            if meta["sha256"] == sha256:
                path = _target_file(svc, info, file)
                if path is not None and path.exists():
                    return _serve_file(path, "application/octet-stream")
    raise _error(404, f"no artifact with sha256 {sha256}")


# devices


@v1.get("/devices", tags=["devices"])
def devices_list(
    request: Request, _: Viewer, group: str | None = None, tag: str | None = None
) -> list[dict[str, Any]]:
    return _svc(request).registry.list_devices(group=group, tag=tag)


@v1.get("/devices/{device_id}", tags=["devices"])
def devices_show(
    device_id: str, request: Request, _: Viewer, recent: Annotated[int, Query(ge=1, le=1000)] = 20
) -> dict[str, Any]:
    d = _svc(request).registry.get(device_id, recent=recent)
    if d is None:
        raise _error(404, f"no device {device_id}")
    return d


@v1.get("/devices/{device_id}/events", tags=["devices"])
def devices_events(
    device_id: str,
    request: Request,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    kind: Annotated[str | None, Query(max_length=256)] = None,
) -> list[dict[str, Any]]:
    """The device's events (update steps, rollbacks with their evidence, drift, camera), newest first.

    ``kind``: only these kinds, comma-separated (e.g. ``update.installed,rollback``).
    """
    events = _svc(request).registry.events(device_id, limit=limit, kind=kind)
    if events is None:
        raise _error(404, f"no device {device_id}")
    return events


@v1.post("/devices", tags=["devices"], status_code=201)
def devices_add(body: DeviceCreate, request: Request, _: Admin) -> dict[str, Any]:
    """Register a device before its first connection (so it can be put in a group): 409 if known."""
    if not valid_device_id(body.device_id):
        raise _error(422, f"{body.device_id!r} is not a valid device id", field="device_id")
    d = _svc(request).registry.register(body.device_id, group=body.group, tags=body.tags)
    if d is None:
        raise _error(409, f"device {body.device_id} is already registered", reason="exists")
    return d


@v1.patch("/devices/{device_id}", tags=["devices"])
def devices_patch(device_id: str, body: DevicePatch, request: Request, _: Admin) -> dict[str, Any]:
    """Set a known device's group and/or tags; 404 for an unknown one (``POST /devices`` registers)."""
    d = _svc(request).registry.assign(
        device_id, group=body.group, tags=body.tags, clear_group=body.clear_group
    )
    if d is None:
        raise _error(404, f"no device {device_id} (register it first: fleet devices add {device_id})")
    return d


@v1.post("/rollback", tags=["devices"])
def rollback(body: RollbackRequest, request: Request, _: Admin) -> dict[str, Any]:
    """Send ``rollback`` to devices (by list or group) now, outside any rollout."""
    svc = _svc(request)
    if (body.devices is None) == (body.group is None):
        raise _error(422, "give exactly one of devices or group")
    ids = svc.registry.select(group=body.group, device_ids=body.devices)
    if not ids:
        raise _error(404, f"no devices in group {body.group!r}" if body.group else "no devices given")
    unknown = sorted(set(ids) - svc.registry.known(ids))
    if unknown:
        raise _error(404, f"unknown devices: {', '.join(unknown[:10])}")
    return {"sent": svc.controller.rollback_devices(ids, body.reason)}


# truth and field accuracy


def _known_labels(svc: Services) -> set[str]:
    labels: set[str] = set()
    for info in _releases(svc):
        path = _target_file(svc, info, "manifest.json")
        if path is not None and path.exists():
            try:
                labels.update(str(x) for x in json.loads(path.read_bytes()).get("labels", []))
            except (ValueError, OSError):
                continue
    return labels


@v1.post("/truth", tags=["truth"], status_code=202)
def truth_post(
    body: TruthPost, request: Request, role: Annotated[str, Depends(truth_writer)]
) -> dict[str, Any]:
    """What a decision's package really was: relayed to the device that decided, which joins it to
    its logged decision and reports ``truth.joined`` (or ``truth.rejected``: unknown decision)."""
    svc = _svc(request)
    if not svc.registry.known([body.device_id]):
        raise _error(404, f"no device {body.device_id}", reason="unknown_device")
    labels = _known_labels(svc)
    if body.label not in labels:
        raise _error(422, f"label {body.label!r} is in no released model's labels", reason="unknown_label")
    if svc.link is None:
        raise _error(503, "no MQTT link to relay the truth to the device", reason="no_link")
    truth_id = secrets.token_hex(8)
    msg = Truth(
        decision_id=body.decision_id,
        label=body.label,
        dimensions_mm=body.dimensions_mm,
        truth_id=truth_id,
        source=body.source or role,
    )
    svc.link.publish(svc.topics.device(body.device_id, "truth"), dump(msg))
    return {
        "truth_id": truth_id,
        "device_id": body.device_id,
        "decision_id": body.decision_id,
        "status": "sent",
    }


@v1.get("/truth", tags=["truth"])
def truth_list(
    request: Request,
    _: Viewer,
    device_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 500,
) -> list[dict[str, Any]]:
    """Stored truth outcomes (the devices' ``truth.joined`` / ``truth.rejected`` events), newest first."""
    svc = _svc(request)
    stmt = select(EventRow).where(EventRow.kind.in_(["truth.joined", "truth.rejected"]))
    if device_id is not None:
        stmt = stmt.where(EventRow.device_id == device_id)
    with svc.db.session() as s:
        rows = s.scalars(stmt.order_by(EventRow.id.desc()).limit(limit)).all()
        return [
            {"device_id": r.device_id, "kind": r.kind, "at": r.at, **((r.payload or {}).get("data") or {})}
            for r in rows
        ]


@v1.get("/accuracy", tags=["truth"])
def accuracy_get(
    request: Request,
    _: Viewer,
    device_id: str | None = None,
    model: str | None = None,
    by_device: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Field accuracy and dimension MAE per model version (``by_device``: per device too), over
    the truth joined in ``[since, until)`` (by the device's clock when it joined)."""
    rows = accuracy.query(
        _svc(request).db, device_id=device_id, model=model, by_device=by_device, since=since, until=until
    )
    return [a.to_dict() for a in rows]


# rollouts


@v1.get("/rollouts", tags=["rollouts"])
def rollouts_list(request: Request, _: Viewer, state: str | None = None) -> list[dict[str, Any]]:
    return _svc(request).controller.list_rollouts(state=state)


@v1.post("/rollouts", tags=["rollouts"], status_code=201)
def rollouts_create(body: RolloutCreate, request: Request, _: Admin) -> dict[str, Any]:
    svc = _svc(request)
    name, _sep, version = body.model.partition("@")
    info = _find_release(svc, name, version)
    if info is None:
        raise _error(404, f"no release {body.model} in the repository (upload it with `fleet release`)")
    if (body.devices is None) == (body.group is None):
        raise _error(422, "give exactly one of devices or group")
    d = svc.settings.rollout
    try:
        stages = parse_stages(body.stages or d.stages)
        policy = resolve_policy(
            d.model_dump(),
            {k: getattr(body, k) for k in (*TEXT_FIELDS, *REQUEST_FIELDS)},
            release_p50_drop=_manifest_p50_drop(svc, info),
        )
        shadow = None
        if body.shadow is not None:
            shadow = (
                StageSize(percent=100.0) if body.shadow.strip() == "all" else parse_stages(body.shadow)[0]
            )
        shadow_gates = ShadowGates().model_copy(
            update={
                k: v
                for k, v in (
                    ("min_agreement", body.shadow_min_agreement),
                    ("min_frames", body.shadow_min_frames),
                )
                if v is not None
            }
        )
        ids = svc.registry.select(group=body.group, device_ids=body.devices)
        if not ids:
            raise _error(422, f"group {body.group!r} has no devices" if body.group else "devices is empty")
        unknown = sorted(set(ids) - svc.registry.known(ids))
        if unknown:
            raise _error(404, f"unknown devices: {', '.join(unknown[:10])}")
        return svc.controller.create(
            name,
            version,
            ids,
            stages,
            policy,
            shadow=shadow,
            shadow_soak_s=parse_duration_s(body.shadow_soak) if body.shadow_soak is not None else 300.0,
            shadow_gates=shadow_gates,
        )
    except ConflictError as exc:
        raise _error(409, str(exc), field=exc.field) from exc
    except ConfigError as exc:
        raise _error(422, str(exc), field=exc.field) from exc


@v1.get("/rollouts/{rollout_id}", tags=["rollouts"])
def rollouts_show(rollout_id: str, request: Request, _: Viewer) -> dict[str, Any]:
    try:
        return _svc(request).controller.get(rollout_id)
    except NotFoundError:
        raise _error(404, f"no rollout {rollout_id}") from None


def _rollout_op(request: Request, rollout_id: str, op: str, **kw: Any) -> dict[str, Any]:
    ctl = _svc(request).controller
    try:
        before = ctl.get(rollout_id)["state"]
        after: dict[str, Any] = getattr(ctl, op)(rollout_id, **kw)
    except NotFoundError:
        raise _error(404, f"no rollout {rollout_id}") from None
    if (
        after["state"] == before
        and not (op == "pause" and before == "paused")
        and not (op == "resume" and before == "running")
    ):
        raise _error(409, f"cannot {op} a rollout that is {before}")
    return after


@v1.post("/rollouts/{rollout_id}/pause", tags=["rollouts"])
def rollouts_pause(rollout_id: str, request: Request, _: Admin) -> dict[str, Any]:
    return _rollout_op(request, rollout_id, "pause")


@v1.post("/rollouts/{rollout_id}/resume", tags=["rollouts"])
def rollouts_resume(
    rollout_id: str, request: Request, _: Admin, body: ResumeRequest | None = None
) -> dict[str, Any]:
    """Resume a paused rollout. One paused on an inconclusive verdict needs ``why`` (an override,
    recorded with ``by``); the same verdict then never pauses it again."""
    try:
        return _rollout_op(
            request, rollout_id, "resume", by=body.by if body else "", why=body.why if body else ""
        )
    except ConfigError as exc:
        raise _error(422, str(exc), field=exc.field, reason="override_needs_reason") from exc


@v1.post("/rollouts/{rollout_id}/abort", tags=["rollouts"])
def rollouts_abort(
    rollout_id: str, request: Request, _: Admin, body: AbortRequest | None = None
) -> dict[str, Any]:
    return _rollout_op(request, rollout_id, "abort", rollback=bool(body and body.rollback))


# alerts


@v1.get("/alerts", tags=["alerts"])
def alerts_list(
    request: Request, _: Viewer, open_only: bool = Query(False, alias="open")
) -> list[dict[str, Any]]:
    return _svc(request).alerts.list_alerts(include_acknowledged=not open_only)


@v1.post("/alerts/{alert_id}/ack", tags=["alerts"])
def alerts_ack(
    # Bounded to the database's integer range: a larger id is a 422, not an OverflowError (500).
    alert_id: Annotated[int, PathParam(ge=0, le=2**63 - 1)],
    request: Request,
    _: Admin,
) -> dict[str, Any]:
    out = _svc(request).alerts.acknowledge(alert_id)
    if out is None:
        raise _error(404, f"no alert {alert_id}")
    return out


# tokens


@v1.post("/tokens", tags=["auth"], status_code=201)
def tokens_create(body: TokenCreate, request: Request, _: Admin) -> dict[str, Any]:
    token = auth.create_token(_svc(request).db, body.role, body.name)
    return {"token": token, "role": body.role, "name": body.name}


@v1.get("/tokens", tags=["auth"])
def tokens_list(request: Request, _: Admin) -> list[dict[str, Any]]:
    return auth.list_tokens(_svc(request).db)


@v1.post("/devices/{device_id}/token", tags=["auth"], status_code=201)
def device_token_issue(device_id: str, request: Request, _: Admin) -> dict[str, Any]:
    """Issue (or rotate) DEVICE's HTTP token: it reads ``/tuf/targets/`` and nothing else.

    The previous token of the device stops working at once; the new one is shown only here.
    """
    if not valid_device_id(device_id):
        raise _error(422, f"{device_id!r} is not a valid device id")
    token = device_tokens.issue(_svc(request).db, device_id)
    return {"device_id": device_id, "role": device_tokens.DEVICE_ROLE, "token": token}


@v1.delete("/devices/{device_id}/token", tags=["auth"])
def device_token_revoke(device_id: str, request: Request, _: Admin) -> dict[str, Any]:
    """Revoke DEVICE's HTTP token (a stolen robot)."""
    if not valid_device_id(device_id):
        raise _error(422, f"{device_id!r} is not a valid device id")
    return {"device_id": device_id, "revoked": device_tokens.revoke(_svc(request).db, device_id)}


def install(app: FastAPI) -> None:
    """Add every router, and make HTTPException bodies ``{"message": ..., ...}``."""
    from fastapi.exceptions import HTTPException as FastAPIHTTPException

    @app.exception_handler(FastAPIHTTPException)
    async def _http(request: Request, exc: FastAPIHTTPException) -> JSONResponse:
        body = exc.detail if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content=jsonable(body), headers=exc.headers)

    app.include_router(open_router)
    app.include_router(tuf_router)
    app.include_router(v1)


__all__ = ["install", "jsonable"]
