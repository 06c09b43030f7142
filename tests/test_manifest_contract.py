"""The manifest's growth rule and its schema-2 preprocessing (letterbox, per-channel scale).

Both directions of the contract: a schema-1 manifest is written and read exactly as before
(an older agent can still run it), and a manifest newer than the agent is refused with the
typed reason ``unsupported`` before any other field is looked at.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from edge_agent.manifest import (
    SCHEMA_VERSION,
    ConfidenceBaseline,
    InputSpec,
    Manifest,
    OutputSpec,
    ResizeSpec,
    parse_manifest,
)
from edge_agent.preprocess import Preprocessor, letterbox_geometry
from lineside_common.errors import ManifestError


def _manifest(schema_version: int = 1, **input_fields: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "input",
        "shape": [1, 3, 4, 8],
        "resize": ResizeSpec(width=8, height=4),
        **input_fields,
    }
    return Manifest(
        schema_version=schema_version,  # type: ignore[arg-type]  # tests pass other values on purpose
        name="foreign",
        version="1.0.0",
        created=datetime(2026, 1, 1, tzinfo=UTC),
        labels=["a", "b"],
        input=InputSpec.model_validate(fields),
        outputs=OutputSpec(class_output="probs"),
        confidence_baseline=ConfidenceBaseline(mean=0.9, p05=0.6, p50=0.95, low_confidence_rate=0.05),
    )


def test_a_schema1_manifest_is_written_without_schema2_fields() -> None:
    raw = json.loads(_manifest().to_json())
    assert raw["schema_version"] == 1
    # Exactly the keys an agent that only knows schema 1 accepts (it forbids unknown fields).
    assert set(raw["input"]["resize"]) == {"width", "height", "interpolation"}
    assert isinstance(raw["input"]["scale"], float)
    assert parse_manifest(json.dumps(raw)) == _manifest()


def test_an_agent_that_only_knows_schema1_still_reads_a_schema1_manifest() -> None:
    m = parse_manifest(_manifest().to_json(), max_schema_version=1)
    assert m.input.resize.mode == "stretch"


@pytest.mark.parametrize(
    "fields",
    [
        {"resize": ResizeSpec(width=8, height=4, mode="letterbox", pad_value=114)},
        {"scale": [1 / 255, 1 / 128, 1 / 64]},
    ],
)
def test_schema2_fields_need_schema_version_2(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="schema_version 2"):
        _manifest(1, **fields)
    m = _manifest(2, **fields)
    assert parse_manifest(m.to_json()) == m


def test_a_manifest_newer_than_the_agent_is_refused_as_unsupported() -> None:
    raw = json.loads(_manifest(2, scale=[0.1, 0.2, 0.3]).to_json())
    # An agent that knows only schema 1 (the rule's "older agent") refuses it, typed.
    with pytest.raises(ManifestError) as exc:
        parse_manifest(json.dumps(raw), max_schema_version=1)
    assert exc.value.reason == "unsupported" and exc.value.field == "schema_version"
    # A future schema with fields this agent has never heard of: refused for its version,
    # not as a pile of unknown fields.
    raw["schema_version"] = SCHEMA_VERSION + 1
    raw["input"]["tone_curve"] = [0, 1]
    with pytest.raises(ManifestError) as exc:
        parse_manifest(json.dumps(raw))
    assert exc.value.reason == "unsupported"


def test_an_invalid_manifest_keeps_the_manifest_reason() -> None:
    raw = json.loads(_manifest().to_json())
    raw["labels"] = ["only-one"]
    with pytest.raises(ManifestError) as exc:
        parse_manifest(json.dumps(raw))
    assert exc.value.reason == "manifest"


def test_pad_value_without_letterbox_is_refused() -> None:
    with pytest.raises(ValueError, match="letterbox"):
        ResizeSpec(width=8, height=4, pad_value=3)


@pytest.mark.parametrize(
    ("src", "dst", "want"),
    [
        ((640, 480), (64, 64), (64, 48, 8, 8, 0, 0)),
        ((480, 640), (64, 64), (48, 64, 0, 0, 8, 8)),
        ((100, 100), (64, 32), (32, 32, 0, 0, 16, 16)),
        ((63, 10), (64, 64), (64, 10, 27, 27, 0, 0)),
        ((64, 64), (64, 64), (64, 64, 0, 0, 0, 0)),
    ],
)
def test_letterbox_geometry(
    src: tuple[int, int], dst: tuple[int, int], want: tuple[int, int, int, int, int, int]
) -> None:
    iw, ih, top, bottom, left, right = letterbox_geometry(src, dst)
    assert (iw, ih, top, bottom, left, right) == want
    assert iw + left + right == dst[0] and ih + top + bottom == dst[1]


def test_letterbox_pads_with_the_declared_value_and_keeps_the_picture() -> None:
    spec = _manifest(
        2,
        shape=[1, 8, 8, 3],
        layout="NHWC",
        color_order="BGR",
        resize=ResizeSpec(width=8, height=8, mode="letterbox", pad_value=114, interpolation="nearest"),
        scale=1.0,
    ).input
    frame = np.full((20, 40, 3), 200, dtype=np.uint8)  # 2:1 → 8x4 picture, 2 rows of padding each side
    x = Preprocessor(spec)(frame)[0]
    assert x.shape == (8, 8, 3)
    assert (x[:2] == 114).all() and (x[6:] == 114).all()
    assert (x[2:6] == 200).all()


def test_per_channel_scale_applies_in_colour_order() -> None:
    spec = _manifest(
        2,
        shape=[1, 3, 2, 2],
        color_order="RGB",
        resize=ResizeSpec(width=2, height=2),
        scale=[1.0, 0.5, 0.25],
        mean=[1.0, 0.0, 0.0],
        std=[1.0, 1.0, 2.0],
    ).input
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    frame[:, :] = (40, 80, 120)  # BGR: R=120, G=80, B=40
    x = Preprocessor(spec)(frame)[0]
    assert np.allclose(x[:, 0, 0], [120 * 1.0 - 1.0, 80 * 0.5, 40 * 0.25 / 2.0])


def test_a_single_scale_is_unchanged() -> None:
    spec = _manifest(1, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).input
    frame = np.full((4, 8, 3), 255, dtype=np.uint8)
    x = Preprocessor(spec)(frame)
    assert np.allclose(x, (1.0 - 0.5) / 0.25)


def test_the_rule_is_mechanical_for_new_fields() -> None:
    """What a schema-2 manifest uses is found by walking the fields, not by a hand-kept list."""
    from edge_agent.manifest import newer_fields, required_schema_version

    m = _manifest(
        2, resize=ResizeSpec(width=8, height=4, mode="letterbox", pad_value=9), scale=[1.0, 2.0, 3.0]
    )
    assert {path for path, _ in newer_fields(m)} == {
        "input.resize.mode",
        "input.resize.pad_value",
        "input.scale (this form)",
    }
    assert required_schema_version(m) == 2
    assert required_schema_version(_manifest()) == 1
