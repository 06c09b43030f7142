"""MQTT topics and payloads between agents and the fleet server.

Every payload is JSON validated by these pydantic models, on both sides. The
device is the authority on what it accepts, so the schemas live here.

Topics (root configurable, default ``lineside/v1``)::

    {root}/devices/{id}/state       agent → fleet  QoS 1, retained, Last Will online=false
    {root}/devices/{id}/telemetry   agent → fleet  QoS 1
    {root}/devices/{id}/events      agent → fleet  QoS 1
    {root}/devices/{id}/cmd         fleet → agent  QoS 1
    {root}/devices/{id}/decisions   agent → robot  QoS 0 (local output)
    {root}/devices/{id}/line        line → agent   QoS 1, retained: the line's PackML-like state
    {root}/devices/{id}/truth       checker → agent QoS 1: what a decision's package really was
                                    (a line checker, an operator or the fleet server; never the robot)

How the contract grows (the rule every new field and kind follows):

- fleet → agent: a command with a field this agent does not know is refused with a
  ``command.rejected`` event carrying its ``cmd_id`` and ``reason: unknown_fields`` — never
  half-understood (a ``deploy`` with ``mode: shadow`` must never run as an install on an agent
  that predates shadows). New command *types* are refused the same way (no handler).
- agent → fleet: the server stores what a newer agent sends — ``Event.kind`` is any well-formed
  dotted name, ``Telemetry`` keeps unknown fields (``extra="allow"``) and the payload is stored
  as received — so nothing a newer agent reports is dropped.
- manifests: an older agent refuses a newer manifest clearly (unknown fields are forbidden,
  ``schema_version`` and ``min_agent_version`` are checked), never half-understands it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lineside_common.errors import MessageError, UnknownCommandFieldError

DEFAULT_TOPIC_ROOT = "lineside/v1"
MAX_PAYLOAD_BYTES = 256 * 1024
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Channel = Literal["state", "telemetry", "events", "cmd", "decisions", "line", "truth"]
CHANNELS: tuple[Channel, ...] = ("state", "telemetry", "events", "cmd", "decisions", "line", "truth")


def valid_device_id(device_id: str) -> bool:
    """Device ids are safe in topics and file names: no '/', '+', '#', spaces."""
    return bool(_DEVICE_ID.match(device_id))


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one root."""

    root: str = DEFAULT_TOPIC_ROOT

    def device(self, device_id: str, channel: Channel) -> str:
        return f"{self.root}/devices/{device_id}/{channel}"

    def wildcard(self, channel: Channel) -> str:
        """Subscription for one channel of every device."""
        return f"{self.root}/devices/+/{channel}"

    def parse(self, topic: str) -> tuple[str, Channel] | None:
        """``(device_id, channel)`` for a topic under this root, else None."""
        prefix = f"{self.root}/devices/"
        if not topic.startswith(prefix):
            return None
        rest = topic[len(prefix) :].split("/")
        if len(rest) != 2 or rest[1] not in CHANNELS or not valid_device_id(rest[0]):
            return None
        return rest[0], cast(Channel, rest[1])  # checked against CHANNELS above


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Msg(BaseModel):
    # Agents may be newer than the server and vice versa: ignore unknown fields, forbid nothing.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ModelRef(_Msg):
    name: str
    version: str
    sha256: str = ""


class DeviceState(_Msg):
    """Retained on ``state``; the broker's Last Will publishes ``online=False``."""

    device_id: str
    online: bool
    since: datetime = Field(default_factory=utcnow)
    agent_version: str = ""
    device_class: str = ""
    active_model: ModelRef | None = None
    previous_model: ModelRef | None = None
    probation: bool = False
    execution_provider: str = ""
    # Which onnxruntime build serves ("onnxruntime-openvino==1.24.1"), and the self-test time per
    # candidate provider when the provider was chosen by measurement (empty for a pin).
    runtime_build: str = ""
    provider_timings_ms: dict[str, float] = Field(default_factory=dict)
    source: str = ""


class Percentiles(_Msg):
    mean: float = 0.0
    p05: float = 0.0
    p50: float = 0.0
    p99: float = 0.0


class DimensionSummary(_Msg):
    width_mm_mean: float = 0.0
    height_mm_mean: float = 0.0
    width_mm_std: float = 0.0
    height_mm_std: float = 0.0


class ShadowBlock(_Msg):
    """A telemetry window's comparison of two models on the same frames (:mod:`edge_agent.agreement`).

    ``role`` says which model ran in shadow: ``candidate`` (a shadow deploy: the serving model is
    the baseline) or ``baseline`` (probation's reverse shadow: the previous model). ``confusion``
    is baseline label × candidate label → frames.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    role: str = "candidate"
    candidate: ModelRef | None = None
    baseline: ModelRef | None = None
    frames: int = 0
    compared: int = 0
    agree: int = 0
    confident_compared: int = 0
    confident_agree: int = 0
    candidate_only: int = 0
    baseline_only: int = 0
    intended: int = 0
    errors: int = 0
    nonfinite: int = 0
    skipped: int = 0
    confusion: dict[str, dict[str, int]] = Field(default_factory=dict)
    candidate_confidence_mean: float = 0.0
    candidate_confidence_p50: float = 0.0
    dimension_diff_mm_mean: float | None = None
    dimension_diff_mm_p95: float | None = None


class Telemetry(_Msg):
    """One aggregation window (default 5 s).

    Fields a newer agent adds are kept (``extra="allow"``): the server stores the payload as
    received, so nothing a newer agent reports is dropped (the contract's growth rule).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    device_id: str
    seq: Annotated[int, Field(ge=0)]
    window_start: datetime
    window_s: float
    frames: int = 0
    dropped: int = 0
    errors: int = 0
    nonfinite: int = 0
    fps: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    confidence_mean: float = 0.0
    confidence_p05: float = 0.0
    confidence_p50: float = 0.0
    low_confidence: int = 0
    class_histogram: dict[str, int] = Field(default_factory=dict)
    dimensions: DimensionSummary | None = None
    model: ModelRef | None = None
    spool_dropped: int = 0
    shadow: ShadowBlock | None = None


EventKind = Literal[
    "agent.started",
    "agent.stopping",
    "pong",
    "command.rejected",
    "message.rejected",
    "drift",
    "camera.lost",
    "camera.restored",
    "provider.fallback",
    "runtime.conflict",
    "update.started",
    "update.verified",
    "update.installed",
    "update.failed",
    "update.rejected",
    "update.deferred",
    "probation.started",
    "probation.passed",
    "rollback",
    "capture",
    "line.state",
    "truth.joined",
    "truth.rejected",
    "error",
    "shadow.started",
    "shadow.stopped",
]
_EVENT_KIND = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"


class Event(_Msg):
    """Something happened on the device; ``cmd_id`` when it answers a command."""

    device_id: str
    seq: Annotated[int, Field(ge=0)]
    # Any well-formed kind, not only this agent's EventKind: a server stores the kinds a newer
    # agent reports instead of dropping its events (the contract's growth rule).
    kind: Annotated[str, Field(min_length=1, max_length=64, pattern=_EVENT_KIND)]
    at: datetime = Field(default_factory=utcnow)
    level: Literal["info", "warning", "error"] = "info"
    message: str = ""
    cmd_id: str | None = None
    rollout_id: str | None = None
    model: ModelRef | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Truth(BaseModel):
    """What a decision's package really was, from a line checker or an operator (``truth`` topic).

    Strict (unknown fields refused): a truth message steers the correctness gates, so a field this
    agent does not understand is an error, never silently dropped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+-[0-9]+$")]
    label: Annotated[str, Field(min_length=1, max_length=64)]
    dimensions_mm: tuple[float, float] | None = None
    truth_id: Annotated[str, Field(max_length=64)] = ""
    source: Annotated[str, Field(max_length=64)] = ""


class _Cmd(BaseModel):
    # A command with a field this agent does not know is refused (command.rejected), never
    # half-understood: a shadow deploy must never be taken for a real one by an older agent.
    model_config = ConfigDict(extra="forbid", frozen=True)

    cmd_id: Annotated[str, Field(min_length=1, max_length=64)]
    issued_at: datetime | None = None


class PingCommand(_Cmd):
    type: Literal["ping"] = "ping"


class SamplingOverride(BaseModel):
    """A rollout's sampling settings for the release it deploys (docs/samples.md); unset: no change.

    On the device they sit above the manifest's defaults and below the device's own ``[samples]``
    settings; ``capture = false`` on the device is final.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    low_confidence_min: Annotated[float, Field(ge=0, le=1)] | None = None
    low_confidence_max: Annotated[float, Field(ge=0, le=1)] | None = None
    random_share: Annotated[float, Field(ge=0, le=1)] | None = None
    drift_share: Annotated[float, Field(ge=0, le=1)] | None = None
    per_minute: Annotated[int, Field(ge=0)] | None = None
    per_hour: Annotated[int, Field(ge=0)] | None = None
    per_day: Annotated[int, Field(ge=0)] | None = None


class DeployCommand(_Cmd):
    """Install ``name@version``: the agent fetches and verifies it through TUF; this message is not trusted."""

    type: Literal["deploy"] = "deploy"
    name: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    rollout_id: str | None = None
    # "shadow": verify and stage exactly like an install, then run beside the serving model on
    # a share of frames without ever acting on it (edge_agent.shadow).
    mode: Literal["install", "shadow"] = "install"
    # The rollout's sampling overrides while this release serves (absent: none). An agent older
    # than this field refuses such a deploy with command.rejected (unknown field), never ignores it.
    sampling: SamplingOverride | None = None


class StopShadowCommand(_Cmd):
    """End a shadow run: the candidate is closed and its staged files are deleted."""

    type: Literal["stop_shadow"] = "stop_shadow"
    rollout_id: str | None = None


class RollbackCommand(_Cmd):
    type: Literal["rollback"] = "rollback"
    reason: Annotated[str, Field(max_length=500)] = ""
    rollout_id: str | None = None


class CaptureCommand(_Cmd):
    type: Literal["capture"] = "capture"
    count: Annotated[int, Field(ge=1, le=1000)] = 10
    low_confidence: bool = Field(default=False, description="only frames in the low-confidence band")


AnyCommand = PingCommand | DeployCommand | RollbackCommand | CaptureCommand | StopShadowCommand
Command = Annotated[AnyCommand, Field(discriminator="type")]
_COMMAND: TypeAdapter[AnyCommand] = TypeAdapter(Command)
M = TypeVar("M", bound=BaseModel)


def _load(payload: bytes, topic: str | None) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(
            f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES} limit", topic=topic
        )
    try:
        return json.loads(
            payload, parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_finite_float
        )
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"payload is not JSON: {exc}", topic=topic) from exc
    except RecursionError as exc:
        # Deeply nested arrays/objects ("[[[[..."): json's C decoder recurses per level.
        raise MessageError("payload is nested too deeply", topic=topic) from exc
    except ValueError as exc:
        # Integers over Python's int-digit limit, or NaN/Infinity (not JSON; see _reject_constant).
        raise MessageError(f"payload is not acceptable JSON: {exc}", topic=topic) from exc


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON and would poison aggregates and API responses downstream.
    raise ValueError(f"{name} is not a JSON number")


MAX_INT = 2**63 - 1  # what a database BIGINT holds; larger integers are refused, not stored


def _bounded_int(text: str) -> int:
    # A seq or counter past 64 bits would parse, then fail every database insert of its batch.
    value = int(text)
    if not -MAX_INT - 1 <= value <= MAX_INT:
        raise ValueError(f"integer {text[:24]}... is out of the 64-bit range")
    return value


def _finite_float(text: str) -> float:
    # "1e999" is valid JSON that Python reads as inf: the same poison as Infinity.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} is out of range")
    return value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{loc}: {err['msg']}"


def parse_command(payload: bytes, topic: str | None = None) -> AnyCommand:
    """Validate a ``cmd`` payload; raise MessageError (never anything else) when it is not one."""
    raw = _load(payload, topic)
    try:
        return _COMMAND.validate_python(raw)
    except ValidationError as exc:
        unknown = sorted(
            ".".join(str(p) for p in e["loc"][1:]) for e in exc.errors() if e["type"] == "extra_forbidden"
        )
        if unknown and isinstance(raw, dict) and isinstance(raw.get("cmd_id"), str):
            raise UnknownCommandFieldError(
                f"command has fields this agent does not know: {', '.join(unknown)}",
                topic=topic,
                cmd_id=raw["cmd_id"][:64],
                command_type=str(raw.get("type", ""))[:32],
                fields=tuple(unknown),
            ) from exc
        raise MessageError(f"invalid command: {_first_error(exc)}", topic=topic) from exc


def parse_message(model: type[M], payload: bytes, topic: str | None = None) -> M:
    """Validate an agent → fleet payload (DeviceState, Telemetry, Event)."""
    raw = _load(payload, topic)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise MessageError(f"invalid {model.__name__}: {_first_error(exc)}", topic=topic) from exc


def dump(msg: BaseModel) -> bytes:
    """Serialise a message for publishing."""
    return msg.model_dump_json(exclude_none=True).encode()
