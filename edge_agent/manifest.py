"""The model manifest: what a bundle's model is and exactly how to run it.

The device is the authority on what it accepts, so the schema lives here and
``fleet_server``, ``models`` and ``sim`` import it. The agent runs any ONNX image
classifier that a correct manifest describes, not only ours.

A bundle is a directory::

    shapes-2.0.0/
      manifest.json
      model.onnx
      selftest.npz     # arrays "inputs" (N, *input.shape[1:]) and one "out_<output name>" per output

The contract rule for growing the manifest (documented for users in docs/manifest.md):

- ``schema_version`` is the bundle format's version. A field that changes how an input
  tensor is made or an output is read is added in a new schema version, optional, with a
  default that keeps the previous behaviour. A manifest only declares the new version when
  it uses such a field (the validator insists), so every manifest an older agent could run
  stays readable by it byte for byte: fields at their defaults are not written out.
- An agent refuses a manifest whose ``schema_version`` is newer than it understands before
  it reads any other field, with ``ManifestError.reason == "unsupported"``: never half
  understood, never "unknown field" noise. Agents from before this rule (schema 1 only,
  extra fields forbidden) refuse it too, as a manifest error.
- ``min_agent_version`` stays the release engineer's gate on agent releases (reason
  ``agent_version``, checked in :mod:`edge_agent.acceptance`).

Schema 2 adds ``input.resize.mode = "letterbox"`` with ``input.resize.pad_value``, a
per-channel ``input.scale`` (a list), and ``sampling`` (the sampler's defaults).

Adding a field: give its ``Field`` ``json_schema_extra={"since_schema": N}`` (N = this
module's next :data:`SCHEMA_VERSION`) and a default that keeps today's behaviour; the rest
(validation that ``schema_version >= N`` when it is used, leaving it out of ``to_json`` when
it is not) follows from :func:`newer_fields`.

Size: one concern, the bundle manifest contract (every field, its validation and the schema
growth rule); kept in one module so the contract is read and versioned as a whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from lineside_common.errors import ManifestError

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SELFTEST_FILE = "selftest.npz"
BUNDLE_FILES = (MANIFEST_FILE, MODEL_FILE, SELFTEST_FILE)
SCHEMA_VERSION = 2
"""The newest manifest schema this agent understands (see the contract rule above)."""
MAX_MANIFEST_BYTES = 1 << 20

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def version_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
    """A sort key for a semantic version; a pre-release sorts before its release.

    Raises ValueError for a string that is not a semantic version.
    """
    m = _SEMVER.match(version)
    if not m:
        raise ValueError(f"not a semantic version: {version!r}")
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return (major, minor, patch, 1, ())
    # Semver: numeric identifiers compare numerically and sort before alphanumeric ones.
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (major, minor, patch, 0, ids)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResizeSpec(_Strict):
    """How the (cropped) frame is resized to the model's input."""

    width: Annotated[int, Field(gt=0, le=4096)]
    height: Annotated[int, Field(gt=0, le=4096)]
    interpolation: Literal["area", "linear", "nearest", "cubic"] = "area"
    mode: Literal["stretch", "letterbox"] = Field(
        default="stretch",
        json_schema_extra={"since_schema": 2},
        description="stretch: resize to width x height ignoring the aspect ratio; letterbox (schema 2): "
        "keep the aspect ratio, centre, and fill the rest with pad_value",
    )
    pad_value: Annotated[int, Field(ge=0, le=255)] = Field(
        default=0,
        description="letterbox fill, a pixel value (0-255) in every channel, before scale/mean/std",
        json_schema_extra={"since_schema": 2},
    )

    @model_validator(mode="after")
    def _pad_only_with_letterbox(self) -> ResizeSpec:
        if self.mode != "letterbox" and self.pad_value != 0:
            raise ValueError("pad_value is only used with mode 'letterbox'")
        return self


class RoiSpec(_Strict):
    """Crop applied before resizing, as fractions of the frame (robust to resolution changes)."""

    x: Annotated[float, Field(ge=0.0, lt=1.0)]
    y: Annotated[float, Field(ge=0.0, lt=1.0)]
    width: Annotated[float, Field(gt=0.0, le=1.0)]
    height: Annotated[float, Field(gt=0.0, le=1.0)]

    @model_validator(mode="after")
    def _inside(self) -> RoiSpec:
        if self.x + self.width > 1.0 + 1e-9 or self.y + self.height > 1.0 + 1e-9:
            raise ValueError("roi must lie inside the frame (x + width <= 1, y + height <= 1)")
        return self


class InputSpec(_Strict):
    """The model's single image input and the exact preprocessing that produces it.

    tensor = ((resize(crop(frame)) in colour_order) * scale - mean) / std, laid out as ``layout``;
    ``scale``, ``mean`` and ``std`` are per channel (in ``color_order``), a single ``scale`` applies
    to every channel.
    """

    name: str
    shape: list[int] = Field(description="e.g. [1, 3, 64, 64]; -1 for a dynamic batch")
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color_order: Literal["BGR", "RGB", "GRAY"] = "RGB"
    resize: ResizeSpec
    roi: RoiSpec | None = None
    scale: float | list[float] = Field(
        default=1.0 / 255.0, description="one factor, or (schema 2) one per channel"
    )
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    # Besides full colour (always accepted), the JPEG decode paths the model's accuracy was
    # validated with (edge_agent.decode): a GRAY model may then be fed a greyscale frame decoded
    # at reduced scale. Optional: older manifests keep the full-colour path only.
    validated_decodes: list[Literal["gray_reduced_2", "gray_reduced_4", "gray_reduced_8"]] = Field(
        default_factory=list
    )

    @property
    def channels(self) -> int:
        return 1 if self.color_order == "GRAY" else 3

    @property
    def scale_per_channel(self) -> list[float]:
        """``scale`` as one factor per channel."""
        return list(self.scale) if isinstance(self.scale, list) else [self.scale] * self.channels

    def schema2_fields(self) -> list[str]:
        """The schema-2 features this input uses (empty: schema 1 describes it)."""
        return [f"input.{path}" for path, since in newer_fields(self) if since >= 2]

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if len(self.shape) != 4:
            raise ValueError("input.shape must have 4 dimensions (batch, and the image)")
        if self.layout == "NCHW":
            c, h, w = self.shape[1], self.shape[2], self.shape[3]
        else:
            h, w, c = self.shape[1], self.shape[2], self.shape[3]
        if c != self.channels:
            raise ValueError(
                f"input.shape has {c} channels but color_order {self.color_order} gives {self.channels}"
            )
        if (h, w) != (self.resize.height, self.resize.width):
            raise ValueError("input.shape's height/width must equal resize.height/width")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if isinstance(self.scale, list) and len(self.scale) != self.channels:
            raise ValueError("a per-channel scale needs one value per channel")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        if self.validated_decodes and self.color_order != "GRAY":
            raise ValueError("validated_decodes (greyscale decode paths) needs color_order GRAY")
        return self


class OutputSpec(_Strict):
    """Which outputs carry what."""

    class_output: str = Field(description="name of the (1, num_labels) output")
    class_kind: Literal["logits", "probabilities"] = "logits"
    dimensions_output: str | None = Field(
        default=None, description="name of an optional (1, 2) output: width_mm, height_mm"
    )


class ConfidenceBaseline(_Strict):
    """The validation-set distribution of top-1 confidence: what drift is measured against."""

    mean: Annotated[float, Field(ge=0, le=1)]
    p05: Annotated[float, Field(ge=0, le=1)]
    p50: Annotated[float, Field(ge=0, le=1)]
    p95: Annotated[float, Field(ge=0, le=1)] = 1.0
    low_confidence_rate: Annotated[float, Field(ge=0, le=1)]
    histogram: list[float] = Field(default_factory=list, description="fraction of frames per 0.05-wide bin")


class Metrics(_Strict):
    """What the model was released with (from ``edge-models evaluate``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    dimension_mae_mm: Annotated[float, Field(ge=0)] | None = None
    ece: Annotated[float, Field(ge=0, le=1)] | None = None
    frames: int | None = None


class ProbationGates(_Strict):
    """Health the new model must show in its first ``window_s`` before it is committed."""

    window_s: Annotated[float, Field(gt=0, le=86400)] = 30.0
    min_frames: Annotated[int, Field(ge=1)] = 50
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_nonfinite: Annotated[int, Field(ge=0)] = 0
    max_latency_p99_ms: Annotated[float, Field(gt=0)] = 50.0
    min_confidence_p50: Annotated[float, Field(ge=0, le=1)] = 0.6
    max_low_confidence_rate: Annotated[float, Field(ge=0, le=1)] = 0.25


class DriftThresholds(_Strict):
    """When the live confidence distribution has moved far enough from the baseline to alert."""

    low_confidence: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.7, description="a frame whose top-1 confidence is below this counts as low-confidence"
    )
    max_p50_drop: Annotated[float, Field(ge=0, le=1)] = 0.10
    max_low_confidence_rate: Annotated[float, Field(ge=0, le=1)] = 0.15
    sustain_windows: Annotated[int, Field(ge=1)] = 2


class SelftestTolerance(_Strict):
    """How far one execution provider's outputs may be from the golden ones."""

    atol: Annotated[float, Field(ge=0)] = 1e-3
    rtol: Annotated[float, Field(ge=0)] = 1e-3


class AgreementGates(_Strict):
    """How a candidate must agree with the model it replaces (shadow phase and probation's reverse shadow).

    Agreement is judged by label name on the labels both models know, with a Wilson lower bound
    over at least ``min_frames`` compared frames (:mod:`edge_agent.agreement`). A release meant
    to change answers declares it in ``intended_changes``: ``{"square-80": ["square-80-lid"]}``
    says frames the old model called ``square-80`` may now be called ``square-80-lid``; those
    frames are reported apart and judged on nothing else. ``{"*": ["hexagon-100"]}`` says any
    old answer may now be ``hexagon-100`` (a release that adds package types the old model
    confidently mistook for known ones).
    """

    min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.9
    min_frames: Annotated[int, Field(ge=1)] = 50
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    max_dimension_diff_mm: Annotated[float, Field(gt=0)] | None = None
    intended_changes: dict[str, list[str]] = Field(default_factory=dict)


class SelftestSpec(_Strict):
    file: str = SELFTEST_FILE
    atol: Annotated[float, Field(ge=0)] = 1e-3
    rtol: Annotated[float, Field(ge=0)] = 1e-3
    # Providers differ numerically (fused kernels, FP16, reordered sums): a producer that validated
    # on, say, OpenVINO declares its tolerance there. Optional: without it, atol/rtol apply to all.
    providers: dict[str, SelftestTolerance] = Field(default_factory=dict)

    def tolerance_for(self, provider: str) -> tuple[float, float]:
        """(atol, rtol) for ``provider``: its own entry, else the bundle-wide one."""
        own = self.providers.get(provider)
        return (own.atol, own.rtol) if own is not None else (self.atol, self.rtol)


class SamplingDefaults(_Strict):
    """Schema 2: which frames devices keep for retraining, as the release suggests it.

    A device's ``[samples]`` settings override each field; unset fields fall back to the
    agent's built-ins (the low-confidence band under ``drift.low_confidence``, no random share).
    """

    low_confidence_min: Annotated[float, Field(ge=0, le=1)] | None = None
    low_confidence_max: Annotated[float, Field(ge=0, le=1)] | None = None
    random_share: Annotated[float, Field(ge=0, le=1)] | None = None
    drift_share: Annotated[float, Field(ge=0, le=1)] | None = None


class Manifest(_Strict):
    """manifest.json of a model bundle."""

    schema_version: Literal[1, 2] = 1
    name: str
    version: str
    created: datetime
    description: str = ""
    labels: list[str]
    input: InputSpec
    outputs: OutputSpec
    metrics: Metrics = Field(default_factory=Metrics)
    confidence_baseline: ConfidenceBaseline
    probation: ProbationGates = Field(default_factory=ProbationGates)
    drift: DriftThresholds = Field(default_factory=DriftThresholds)
    agreement: AgreementGates = Field(default_factory=AgreementGates)
    selftest: SelftestSpec = Field(default_factory=SelftestSpec)
    sampling: SamplingDefaults | None = Field(
        default=None,
        json_schema_extra={"since_schema": 2},
        description="schema 2: the sampler's defaults for this model (docs/samples.md)",
    )
    min_agent_version: str = "0.1.0"
    device_classes: list[str] = Field(default_factory=lambda: ["*"], description='"*" means any class')
    # Free-form extras a producer may want to carry (training config hash, dataset seeds...).
    extra: dict[str, object] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be lower-case letters, digits, '.', '_' or '-' (at most 64)")
        return v

    @field_validator("version", "min_agent_version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError(f"{v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError("a classifier needs at least 2 labels")
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        return v

    @model_validator(mode="after")
    def _schema_covers_fields(self) -> Manifest:
        needs = required_schema_version(self)
        if needs > self.schema_version:
            used = [path for path, since in newer_fields(self) if since > self.schema_version]
            raise ValueError(f"{', '.join(used)} need schema_version {needs} (older agents cannot read them)")
        return self

    @field_validator("device_classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError('device_classes must not be empty (use ["*"] for any)')
        return v

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def supports_device_class(self, device_class: str) -> bool:
        return "*" in self.device_classes or device_class in self.device_classes

    def to_json(self) -> str:
        """The manifest as written to disk. Fields newer than schema 1 are left out while they
        hold their defaults, so a manifest that needs nothing new stays readable by older agents."""
        return self.model_dump_json(indent=2, exclude=_defaults_of_newer_fields(self) or None)


# -- the growth rule, mechanically -------------------------------------------------------------
# A field added after schema 1 carries ``json_schema_extra={"since_schema": N}`` on its Field and
# a default that keeps the old behaviour; a value form added later (a per-channel list where a
# number was) is listed in ``_NEWER_VALUE_FORMS``. Nothing else is needed: the validator insists
# on ``schema_version >= N`` when such a field is used, and ``to_json`` leaves it out otherwise.


def _since(info: FieldInfo) -> int:
    extra = info.json_schema_extra
    since = extra.get("since_schema", 1) if isinstance(extra, dict) else 1
    return since if isinstance(since, int) else 1


# (model class, field name) → (test on the value, schema version that introduced that form)
_NEWER_VALUE_FORMS: dict[tuple[str, str], tuple[Callable[[object], bool], int]] = {
    ("InputSpec", "scale"): (lambda v: isinstance(v, list), 2),
}


def newer_fields(model: BaseModel, prefix: str = "") -> list[tuple[str, int]]:
    """(dotted path, schema version) of every post-schema-1 field or value form ``model`` uses."""
    out: list[tuple[str, int]] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}{name}"
        since = _since(info)
        if since > 1 and value != info.get_default(call_default_factory=True):
            out.append((path, since))
        form = _NEWER_VALUE_FORMS.get((type(model).__name__, name))
        if form is not None and form[0](value):
            out.append((f"{path} (this form)", form[1]))
        if isinstance(value, BaseModel):
            out.extend(newer_fields(value, f"{path}."))
    return out


def required_schema_version(model: BaseModel) -> int:
    """The lowest schema version that can describe ``model``."""
    return max((since for _, since in newer_fields(model)), default=1)


def _defaults_of_newer_fields(model: BaseModel) -> dict[str, Any]:
    exclude: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if _since(info) > 1 and value == info.get_default(call_default_factory=True):
            exclude[name] = True
        elif isinstance(value, BaseModel):
            inner = _defaults_of_newer_fields(value)
            if inner:
                exclude[name] = inner
    return exclude


def parse_manifest(data: bytes | str, *, max_schema_version: int = SCHEMA_VERSION) -> Manifest:
    """Parse and validate manifest bytes; raise ManifestError naming the first bad field.

    A ``schema_version`` above ``max_schema_version`` (this agent's :data:`SCHEMA_VERSION`)
    is refused first, with ``reason="unsupported"``, whatever else the manifest holds.
    """
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    try:
        raw = json.loads(data, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ManifestError("manifest is nested too deeply") from exc
    except ValueError as exc:
        # Integers over Python's int-digit limit, or NaN/Infinity (not JSON).
        raise ManifestError(f"manifest is not acceptable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError("manifest must be a JSON object")
    declared = raw.get("schema_version", 1)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > max_schema_version:
        raise ManifestError(
            f"manifest schema_version {declared} is newer than this agent understands "
            f"(up to {max_schema_version}): update the agent to run this model",
            field="schema_version",
            reason="unsupported",
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise ManifestError(f"manifest field {field or '(root)'}: {err['msg']}", field=field) from exc


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def load_manifest(bundle_dir: Path | str) -> Manifest:
    """Read ``bundle_dir/manifest.json``."""
    path = Path(bundle_dir) / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(f"no {MANIFEST_FILE} in {bundle_dir}") from exc
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_manifest(data)
