"""Hostile manifest.json bytes against ``parse_manifest``: only ManifestError may come out.

The manifest is checked after TUF verification, but the parser must still never crash on what a
compromised release pipeline (or a USB stick) could carry: mutated valid manifests, hostile field
values, deep nesting, huge numbers, NaN/Infinity, and files over ``MAX_MANIFEST_BYTES``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.manifest import (
    MAX_MANIFEST_BYTES,
    ConfidenceBaseline,
    InputSpec,
    Manifest,
    OutputSpec,
    ResizeSpec,
    RoiSpec,
    parse_manifest,
)
from lineside_common.errors import ManifestError
from tests.fuzz_inputs import RAW_NASTIES, deep, field_replaced, json_values, mutated

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = Manifest(
    name="shapes",
    version="2.0.0",
    created=datetime(2026, 1, 1, tzinfo=UTC),
    labels=["circle-80", "square-80", "triangle-100"],
    input=InputSpec(
        name="input",
        shape=[1, 3, 64, 64],
        resize=ResizeSpec(width=64, height=64),
        roi=RoiSpec(x=0.1, y=0.1, width=0.8, height=0.8),
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    ),
    outputs=OutputSpec(class_output="logits", dimensions_output="dims"),
    confidence_baseline=ConfidenceBaseline(mean=0.9, p05=0.6, p50=0.95, low_confidence_rate=0.05),
    device_classes=["generic", "jetson-orin"],
    extra={"seed": 1},
)
SEED_BYTES = VALID.to_json().encode()
SEED_OBJ: dict[str, Any] = json.loads(SEED_BYTES)


def _parse(payload: bytes) -> Manifest | None:
    try:
        return parse_manifest(payload)
    except ManifestError:
        return None


def test_seed_is_valid() -> None:
    assert parse_manifest(SEED_BYTES) == VALID


@FUZZ
@given(payload=mutated([SEED_BYTES, json.dumps(SEED_OBJ, separators=(",", ":")).encode()]))
def test_mutated_manifests_only_raise_manifest_error(payload: bytes) -> None:
    _parse(payload)


@FUZZ
@given(payload=field_replaced([SEED_OBJ]))
def test_manifests_with_a_hostile_field(payload: bytes) -> None:
    m = _parse(payload)
    if m is not None:
        # What got through still satisfies the rules the agent relies on.
        assert len(m.labels) == len(set(m.labels)) >= 2
        assert len(m.input.shape) == 4 and all(s != 0 for s in m.input.std)
        assert m.device_classes


@FUZZ
@given(value=json_values)
def test_generated_json_only_raises_manifest_error(value: Any) -> None:
    _parse(json.dumps(value).encode())


@FUZZ
@given(payload=st.one_of(st.binary(max_size=512), st.text(max_size=200).map(str.encode)))
def test_random_bytes_only_raise_manifest_error(payload: bytes) -> None:
    _parse(payload)


@pytest.mark.parametrize(
    "payload", [*RAW_NASTIES, deep(200_000), deep(60_000, "dict")], ids=lambda p: repr(p[:20])
)
def test_known_nasties_are_rejected(payload: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(payload)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_a_numeric_field_is_refused(literal: str) -> None:
    text = SEED_BYTES.decode().replace('"mean": 0.9', f'"mean": {literal}', 1)
    assert literal in text
    with pytest.raises(ManifestError, match="not a JSON number"):
        parse_manifest(text)


def test_oversized_manifest_is_refused_by_the_bound() -> None:
    obj = dict(SEED_OBJ, description="x" * MAX_MANIFEST_BYTES)
    with pytest.raises(ManifestError, match="over the"):
        parse_manifest(json.dumps(obj).encode())
    obj["description"] = "x" * (MAX_MANIFEST_BYTES - len(json.dumps(dict(obj, description=""))))
    assert len(json.dumps(obj).encode()) == MAX_MANIFEST_BYTES
    assert parse_manifest(json.dumps(obj).encode()).description == obj["description"]
