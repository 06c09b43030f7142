"""The one rollout policy: its three views share Policy's fields, and resolve_policy's precedence
(request > release's allowance > settings > built-in defaults), field by field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.messages import SamplingOverride
from fleet_server.api import RolloutCreate
from fleet_server.policy import (
    REQUEST_FIELDS,
    SETTINGS_FIELDS,
    TEXT_FIELDS,
    Policy,
    parse_duration_s,
    parse_fraction,
    resolve_policy,
)
from fleet_server.settings import RolloutDefaults, load_settings
from lineside_common.errors import ConfigError

DEFAULTS = Policy()

# A valid value for each field that differs from the built-in default and from each other layer.
SETTINGS_VALUE: dict[str, Any] = {
    "soak_s": 11.0,
    "max_failure_rate": 0.21,
    "max_confidence_p50_drop": 0.22,
    "max_low_confidence_rate_rise": 0.23,
    "min_gate_frames": 17,
    "baseline_window_s": 120.0,
    "resend_after_s": 7.0,
    "max_sends": 2,
    "device_timeout_s": 100.0,
    "gate_timeout_s": 40.0,
}
REQUEST_VALUE: dict[str, Any] = {
    "max_confidence_p50_drop": 0.31,
    "max_low_confidence_rate_rise": 0.32,
    "min_gate_frames": 0,  # 0 is given, not "unset"
    "baseline_window_s": 60.0,
    "resend_after_s": 3.0,
    "device_timeout_s": 50.0,
    "gate_timeout_s": 20.0,
    "no_baseline": "pass",
    "sampling": SamplingOverride(random_share=0.5),
}
# Request text spellings: (request field, text, policy field, value).
TEXT_VALUE = [("soak", "2m", "soak_s", 120.0), ("max_failure", "40%", "max_failure_rate", 0.4)]

# Out-of-bounds values per field (each must be refused wherever it comes from).
INVALID: dict[str, list[Any]] = {
    "soak_s": [-1],
    "max_failure_rate": [-0.1, 1.5],
    "max_confidence_p50_drop": [-0.1, 1.01],
    "max_low_confidence_rate_rise": [-0.1, 2],
    "min_gate_frames": [-1, 1.5],
    "baseline_window_s": [0, -5],
    "resend_after_s": [0],
    "max_sends": [0],
    "device_timeout_s": [0],
    "gate_timeout_s": [-1],
    "no_baseline": ["maybe"],
}


def test_the_views_are_policys_fields() -> None:
    policy_fields = Policy.model_fields
    assert set(RolloutDefaults.model_fields) == {*SETTINGS_FIELDS, "stages"}
    for name in SETTINGS_FIELDS:
        mine = RolloutDefaults.model_fields[name]
        assert mine.default == policy_fields[name].default
        assert mine.metadata == policy_fields[name].metadata
    for name in REQUEST_FIELDS:
        assert RolloutCreate.model_fields[name].default is None
    assert set(TEXT_FIELDS) <= set(RolloutCreate.model_fields)
    # Fields no request or setting names keep their built-in defaults.
    assert {
        "max_error_rate_rise",
        "max_field_accuracy_drop",
        "min_field_truth",
        "min_gate_windows",
    }.isdisjoint({*SETTINGS_FIELDS, *REQUEST_FIELDS, *RolloutCreate.model_fields})


def test_nothing_given_is_the_built_in_defaults() -> None:
    assert resolve_policy({}, {}) == DEFAULTS
    assert resolve_policy(RolloutDefaults().model_dump(), {}) == DEFAULTS
    assert resolve_policy({}, dict.fromkeys([*REQUEST_FIELDS, *TEXT_FIELDS])) == DEFAULTS


@pytest.mark.parametrize("field", SETTINGS_FIELDS)
def test_settings_override_the_default(field: str) -> None:
    p = resolve_policy({field: SETTINGS_VALUE[field], "stages": "1,100%"}, {})
    assert getattr(p, field) == SETTINGS_VALUE[field] != getattr(DEFAULTS, field)
    others = {k for k in Policy.model_fields if k != field}
    assert all(getattr(p, k) == getattr(DEFAULTS, k) for k in others)


@pytest.mark.parametrize("field", REQUEST_FIELDS)
def test_the_request_overrides_settings_and_default(field: str) -> None:
    p = resolve_policy(SETTINGS_VALUE, {field: REQUEST_VALUE[field]})
    assert getattr(p, field) == REQUEST_VALUE[field]
    assert getattr(p, field) != getattr(DEFAULTS, field)
    assert getattr(p, field) != SETTINGS_VALUE.get(field, getattr(DEFAULTS, field))
    for k in SETTINGS_FIELDS:
        if k != field:
            assert getattr(p, k) == SETTINGS_VALUE[k]


@pytest.mark.parametrize(("key", "text", "field", "value"), TEXT_VALUE)
def test_the_requests_text_fields_override_settings(key: str, text: str, field: str, value: float) -> None:
    assert resolve_policy({}, {key: None}) == DEFAULTS
    assert getattr(resolve_policy(SETTINGS_VALUE, {key: None}), field) == SETTINGS_VALUE[field]
    assert getattr(resolve_policy(SETTINGS_VALUE, {key: text}), field) == pytest.approx(value)


def test_a_request_none_is_not_given() -> None:
    p = resolve_policy(SETTINGS_VALUE, dict.fromkeys([*REQUEST_FIELDS, *TEXT_FIELDS]))
    assert p == Policy.model_validate(SETTINGS_VALUE)


def test_settings_cannot_set_request_only_fields() -> None:
    # stages is the settings' own (not a policy field); max_sends is not the request's.
    assert resolve_policy({"stages": "100%", "no_baseline": "pass"}, {}) == DEFAULTS
    with pytest.raises(ValueError, match="max_sends"):
        resolve_policy({}, {"max_sends": 3})
    with pytest.raises(ValidationError):
        RolloutDefaults(no_baseline="pass")
    with pytest.raises(ValidationError):
        RolloutCreate(model="a@1", max_sends=3)


def test_the_release_allowance_sits_between_request_and_settings() -> None:
    assert resolve_policy({}, {}, release_p50_drop=0.4).max_confidence_p50_drop == 0.4
    assert resolve_policy(SETTINGS_VALUE, {}, release_p50_drop=0.4).max_confidence_p50_drop == 0.4
    p = resolve_policy(SETTINGS_VALUE, {"max_confidence_p50_drop": 0.05}, release_p50_drop=0.4)
    assert p.max_confidence_p50_drop == 0.05
    assert resolve_policy(SETTINGS_VALUE, {}, release_p50_drop=None).max_confidence_p50_drop == 0.22
    # Only that field.
    assert resolve_policy({}, {}, release_p50_drop=0.4).model_dump(exclude={"max_confidence_p50_drop"}) == (
        DEFAULTS.model_dump(exclude={"max_confidence_p50_drop"})
    )


@pytest.mark.parametrize("empty", [SamplingOverride(), {}, {"random_share": None}])
def test_an_empty_sampling_override_is_none(empty: Any) -> None:
    assert resolve_policy({}, {"sampling": empty}).sampling is None


def test_a_sampling_override_is_kept_as_given() -> None:
    given = SamplingOverride(random_share=0.25, per_minute=4)
    p = resolve_policy({}, {"sampling": given})
    assert p.sampling == given
    assert resolve_policy({}, {"sampling": {"random_share": 0.25, "per_minute": 4}}).sampling == given


@pytest.mark.parametrize(("field", "bad"), [(f, v) for f, vs in INVALID.items() for v in vs])
def test_invalid_values_are_refused_naming_the_field(field: str, bad: Any) -> None:
    if field in REQUEST_FIELDS:
        with pytest.raises(ConfigError) as exc:
            resolve_policy({}, {field: bad})
        assert exc.value.field == field
        with pytest.raises(ValidationError):
            RolloutCreate(model="a@1", **{field: bad})
    if field in SETTINGS_FIELDS:
        with pytest.raises(ConfigError) as exc:
            resolve_policy({field: bad}, {})
        assert exc.value.field == field
        with pytest.raises(ConfigError) as exc:
            load_settings(env={f"LINESIDE_FLEET_ROLLOUT__{field.upper()}": str(bad)})
        assert exc.value.field == f"rollout.{field}"
    with pytest.raises(ValidationError):
        Policy.model_validate({field: bad})


@pytest.mark.parametrize(
    ("key", "bad", "field"),
    [
        ("soak", "soon", "soak"),
        ("soak", "-5s", "soak"),
        ("max_failure", "150%", None),
        ("max_failure", "x", None),
    ],
)
def test_invalid_text_fields_are_refused(key: str, bad: str, field: str | None) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_policy(SETTINGS_VALUE, {key: bad})
    assert exc.value.field == field  # the API's 422 body carries this ``field``, unchanged


def test_an_invalid_release_allowance_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_policy({}, {}, release_p50_drop=1.5)
    assert exc.value.field == "max_confidence_p50_drop"


def test_parse_duration_and_fraction() -> None:
    assert parse_duration_s("60s") == 60
    assert parse_duration_s("5m") == 300
    assert parse_duration_s("1.5h") == 5400
    assert parse_duration_s("90") == 90
    assert parse_duration_s("250ms") == 0.25
    assert parse_fraction("10%") == pytest.approx(0.1)
    assert parse_fraction("0.25") == 0.25
    for bad in ("soon", "-5s"):
        with pytest.raises(ConfigError):
            parse_duration_s(bad)
    for bad in ("x", "150%", "2"):
        with pytest.raises(ConfigError):
            parse_fraction(bad)
