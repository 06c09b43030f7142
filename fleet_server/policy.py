"""A rollout's policy: its fields defined once (:class:`Policy`), and the one pure resolver.

Pure: no files, no settings loading, no clock. Three views share the field definitions of
:class:`Policy` (name, type, bounds, default, description), so a bound changes in one place:

- :class:`Policy` itself: every field with its built-in default, stored in the rollout's document;
- the server settings' ``[rollout]`` section (``fleet_server.settings.RolloutDefaults``): the
  fields of :data:`SETTINGS_FIELDS` with the same defaults, built by :func:`policy_fields`;
- the API request (``POST /api/v1/rollouts``, ``fleet_server.api.RolloutCreate``): the fields of
  :data:`REQUEST_FIELDS`, each optional (``None``: not given), built by :func:`policy_fields`;
  two more are spelled as text there, as on the CLI: ``soak`` (``"60s"``) for ``soak_s`` and
  ``max_failure`` (``"10%"``) for ``max_failure_rate`` (:data:`TEXT_FIELDS`).

:func:`resolve_policy` gives the effective policy: request > settings > built-in defaults, field
by field; ``max_confidence_p50_drop`` has one more layer between the request and the settings,
the release's own allowance (its manifest's ``drift.max_p50_drop``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from edge_agent.messages import SamplingOverride
from lineside_common.errors import ConfigError


class Policy(BaseModel):
    """Gates and timings of one rollout (defaults from settings, overridden per rollout)."""

    soak_s: Annotated[float, Field(ge=0)] = 60.0
    max_failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.10
    # Quality gates vs the same devices' pre-rollout telemetry (absolute differences of fractions).
    max_confidence_p50_drop: Annotated[float, Field(ge=0, le=1)] = 0.10
    max_low_confidence_rate_rise: Annotated[float, Field(ge=0, le=1)] = 0.10
    # Zero errors on both sides still needs ~75 frames a side for an upper bound under 0.05
    # (under 0.01 it would need ~380): a gate that can be decided on a stage's data.
    max_error_rate_rise: Annotated[float, Field(ge=0, le=1)] = 0.05
    # Field accuracy (truth from the line) may drop by at most this much; judged only with at
    # least ``min_field_truth`` joined decisions a side (fleet_server/field_gate.py).
    max_field_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    min_field_truth: Annotated[int, Field(ge=1)] = 30
    min_gate_frames: Annotated[int, Field(ge=0)] = 50
    min_gate_windows: Annotated[int, Field(ge=1)] = 3
    baseline_window_s: Annotated[float, Field(gt=0)] = 600.0
    # A deploy with no answer is re-sent after this long (agents are idempotent on cmd_id).
    resend_after_s: Annotated[float, Field(gt=0)] = 30.0
    max_sends: Annotated[int, Field(ge=1)] = 5
    # A device that has not passed or failed probation within this long counts as failed.
    device_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    # After the soak, wait at most this long for enough telemetry to judge quality, then halt.
    gate_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    # With no telemetry to compare against, a gate is inconclusive (pause, alert) unless the
    # operator's policy says "pass" — a choice recorded with the verdict.
    no_baseline: Literal["inconclusive", "pass"] = Field(
        default="inconclusive",
        description="what a gate with no baseline telemetry answers (default inconclusive)",
    )
    # Sent with every (serving) deploy of this rollout; the device applies it while the release serves.
    sampling: SamplingOverride | None = Field(
        default=None,
        description="sampling settings the devices use while this release serves (docs/samples.md)",
    )


# The fields an operator may set in the server settings' ``[rollout]`` section.
SETTINGS_FIELDS: tuple[str, ...] = (
    "soak_s",
    "max_failure_rate",
    "max_confidence_p50_drop",
    "max_low_confidence_rate_rise",
    "min_gate_frames",
    "baseline_window_s",
    "resend_after_s",
    "max_sends",
    "device_timeout_s",
    "gate_timeout_s",
)

# The fields a rollout request may give under their own names (and so, the CLI's flags).
REQUEST_FIELDS: tuple[str, ...] = (
    "max_confidence_p50_drop",
    "max_low_confidence_rate_rise",
    "min_gate_frames",
    "baseline_window_s",
    "resend_after_s",
    "device_timeout_s",
    "gate_timeout_s",
    "no_baseline",
    "sampling",
)

# -- parsing operator input ---------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration_s(text: str) -> float:
    """``"60s"``, ``"5m"``, ``"1h"``, ``"90"`` (seconds) → seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{text!r} is not a duration like 60s, 5m or 1h", field="soak")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def parse_fraction(text: str) -> float:
    """``"10%"`` or ``"0.1"`` → 0.1."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"{text!r} is not a percentage like 10% or a fraction like 0.1") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"{text!r} must be between 0% and 100%")
    return value


# The request's text spellings: its field → (the policy field, the parser that reads it).
TEXT_FIELDS: dict[str, tuple[str, Callable[[str], float]]] = {
    "soak": ("soak_s", parse_duration_s),
    "max_failure": ("max_failure_rate", parse_fraction),
}

# -- the views ----------------------------------------------------------------------------------


def policy_fields(names: Iterable[str], *, optional: bool) -> dict[str, Any]:
    """``pydantic.create_model`` definitions of Policy's fields ``names``: same types, bounds and
    descriptions; with ``optional`` each is ``T | None = None`` (a request's "not given"), else it
    keeps Policy's default (a settings section)."""
    out: dict[str, Any] = {}
    for name in names:
        info = Policy.model_fields[name]
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        if optional:
            out[name] = (annotation | None, Field(default=None, description=info.description))
        else:
            out[name] = (annotation, Field(default=info.default, description=info.description))
    return out


# -- the resolver -------------------------------------------------------------------------------


def resolve_policy(
    settings: Mapping[str, Any],
    request: Mapping[str, Any],
    *,
    release_p50_drop: float | None = None,
) -> Policy:
    """The effective policy: ``request`` > ``settings`` > Policy's defaults, field by field.

    ``settings``: the ``[rollout]`` section's values (any of :data:`SETTINGS_FIELDS`; other keys,
    such as ``stages``, are not the policy's and are left alone). ``request``: the request's policy
    fields, under the request's names (:data:`REQUEST_FIELDS` and :data:`TEXT_FIELDS`); ``None``
    means not given, and so does an empty ``sampling``. ``release_p50_drop``: the release's own
    ``max_confidence_p50_drop``, over the settings' and under the request's.

    ConfigError (``field`` set where the bad value has a name) for a value that does not parse or
    is out of bounds; ValueError for a request key that is no policy field (a caller's bug).
    """
    values: dict[str, Any] = {k: settings[k] for k in SETTINGS_FIELDS if settings.get(k) is not None}
    if release_p50_drop is not None:
        values["max_confidence_p50_drop"] = release_p50_drop
    for key, value in request.items():
        if value is None:
            continue
        if key in TEXT_FIELDS:
            field, parse = TEXT_FIELDS[key]
            values[field] = parse(value)
        elif key == "sampling":
            # An empty override is none: the deploy then carries no field an older agent refuses.
            if _sampling_given(value):
                values[key] = value
        elif key in REQUEST_FIELDS:
            values[key] = value
        else:
            raise ValueError(f"{key!r} is not a rollout policy field of a request")
    try:
        return Policy.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{loc}: {err['msg']}", field=loc) from exc


def _sampling_given(value: Any) -> bool:
    if isinstance(value, SamplingOverride):
        return bool(value.model_dump(exclude_none=True))
    return any(v is not None for v in dict(value).values())
