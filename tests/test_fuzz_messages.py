"""Hostile MQTT payloads against the schemas both sides use: only MessageError may come out.

Commands (what the agent reads on ``cmd``) and DeviceState / Telemetry / Event (what the server reads)
under mutated valid payloads, field-level replacements and generated junk; deep nesting, integers
past Python's digit limit, NaN/Infinity and payloads over ``MAX_PAYLOAD_BYTES``.
"""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from edge_agent.messages import (
    MAX_PAYLOAD_BYTES,
    CaptureCommand,
    DeployCommand,
    DeviceState,
    Event,
    ModelRef,
    PingCommand,
    RollbackCommand,
    Telemetry,
    dump,
    parse_command,
    parse_message,
)
from lineside_common.errors import MessageError
from tests.fuzz_inputs import RAW_NASTIES, deep, field_replaced, json_values, mutated

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 1, 1, tzinfo=UTC)
REF = ModelRef(name="shapes", version="1.0.0", sha256="ab" * 32)

COMMANDS: list[BaseModel] = [
    PingCommand(cmd_id="p-1"),
    DeployCommand(cmd_id="d-1", name="shapes", version="2.0.0", rollout_id="r-1"),
    RollbackCommand(cmd_id="rb-1", reason="operator"),
    CaptureCommand(cmd_id="c-1", count=5),
]
STATES: list[BaseModel] = [
    DeviceState(device_id="robot-1", online=True, since=NOW, active_model=REF, previous_model=REF)
]
TELEMETRY: list[BaseModel] = [
    Telemetry(
        device_id="robot-1",
        seq=7,
        window_start=NOW,
        window_s=5.0,
        frames=150,
        class_histogram={"circle-80": 100, "square-80": 50},
        model=REF,
    )
]
EVENTS: list[BaseModel] = [
    Event(
        device_id="robot-1",
        seq=3,
        kind="update.installed",
        at=NOW,
        cmd_id="d-1",
        model=REF,
        data={"swap": {"dropped": 0}},
    )
]
INBOUND: list[tuple[type[BaseModel], list[BaseModel]]] = [
    (DeviceState, STATES),
    (Telemetry, TELEMETRY),
    (Event, EVENTS),
]


def _seeds(msgs: list[BaseModel]) -> list[bytes]:
    return [dump(m) for m in msgs]


def _objs(msgs: list[BaseModel]) -> list[dict[str, Any]]:
    return [json.loads(dump(m)) for m in msgs]


def _only_message_error(fn: Any, payload: bytes) -> Any:
    """Call the parser; anything but a value or MessageError fails the test (with the payload)."""
    try:
        return fn(payload)
    except MessageError:
        return None


def _parse_inbound(payload: bytes) -> None:
    for model, _ in INBOUND:
        _only_message_error(lambda p, m=model: parse_message(m, p, "t"), payload)


def test_seeds_are_valid() -> None:
    # The mutations start from these: they must parse, or the fuzzing proves little.
    for m in COMMANDS:
        assert parse_command(dump(m)) == m
    for model, msgs in INBOUND:
        for m in msgs:
            assert parse_message(model, dump(m)) == m


@FUZZ
@given(payload=mutated(_seeds(COMMANDS)))
def test_mutated_commands_only_raise_message_error(payload: bytes) -> None:
    _only_message_error(parse_command, payload)


@FUZZ
@given(payload=field_replaced(_objs(COMMANDS)))
def test_commands_with_a_hostile_field(payload: bytes) -> None:
    cmd = _only_message_error(parse_command, payload)
    if cmd is not None:
        # Whatever got through is bounded by the schema: ids and names stay short.
        assert 1 <= len(cmd.cmd_id) <= 64
        if isinstance(cmd, DeployCommand):
            assert len(cmd.name) <= 64 and len(cmd.version) <= 64


@FUZZ
@given(
    payload=st.one_of(
        mutated(_seeds(STATES + TELEMETRY + EVENTS)), field_replaced(_objs(STATES + TELEMETRY + EVENTS))
    )
)
def test_mutated_state_telemetry_events_only_raise_message_error(payload: bytes) -> None:
    _parse_inbound(payload)


@FUZZ
@given(value=json_values)
def test_generated_json_only_raises_message_error(value: Any) -> None:
    payload = json.dumps(value).encode()
    _only_message_error(parse_command, payload)
    _parse_inbound(payload)


@FUZZ
@given(payload=st.binary(max_size=512))
def test_random_bytes_only_raise_message_error(payload: bytes) -> None:
    _only_message_error(parse_command, payload)
    _parse_inbound(payload)


@pytest.mark.parametrize("payload", RAW_NASTIES, ids=lambda p: repr(p[:20]))
def test_known_nasties_are_rejected(payload: bytes) -> None:
    with pytest.raises(MessageError):
        parse_command(payload)
    for model, _ in INBOUND:
        with pytest.raises(MessageError):
            parse_message(model, payload, "t")


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deep_nesting_is_a_message_error(kind: str) -> None:
    payload = deep(120_000 if kind == "list" else 40_000, kind)
    assert len(payload) <= MAX_PAYLOAD_BYTES
    with pytest.raises(MessageError, match=r"nested too deeply|not JSON"):
        parse_command(payload)


def test_nan_and_infinity_are_refused_even_where_any_value_is_allowed() -> None:
    ev = json.loads(dump(EVENTS[0]))
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = json.dumps(ev)[:-1] + f', "data": {{"x": {literal}}}}}'
        with pytest.raises(MessageError, match="not a JSON number"):
            parse_message(Event, raw.encode())
        tel = json.dumps(json.loads(dump(TELEMETRY[0])) | {"fps": 0.0}).replace("0.0", literal, 1)
        with pytest.raises(MessageError):
            parse_message(Telemetry, tel.encode())


def test_oversized_payload_is_refused_by_the_bound_before_parsing() -> None:
    big = json.dumps({"cmd_id": "x", "type": "ping", "pad": "a" * MAX_PAYLOAD_BYTES}).encode()
    with pytest.raises(MessageError, match="over the"):
        parse_command(big)
    with pytest.raises(MessageError, match="over the"):
        parse_message(Telemetry, big)
    # Right at the bound it is parsed (and rejected for its content, not its size).
    at_bound = b" " * (MAX_PAYLOAD_BYTES - len(dump(COMMANDS[0]))) + dump(COMMANDS[0])
    assert len(at_bound) == MAX_PAYLOAD_BYTES
    assert parse_command(at_bound) == COMMANDS[0]


def test_rejecting_hostile_payloads_does_not_grow_memory() -> None:
    # Parse a mix of junk many times; traced memory after must not keep what was parsed.
    junk = [*RAW_NASTIES, deep(100_000), b'{"cmd_id": "' + b"x" * 200_000 + b'"}']
    for p in junk:  # warm caches (pydantic, json) first
        _only_message_error(parse_command, p)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            for p in junk:
                _only_message_error(parse_command, p)
                _parse_inbound(p)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 1_000_000, f"{after - before} bytes retained after rejecting junk"


@pytest.mark.parametrize(
    ("field", "literal"),
    [("seq", str(2**64)), ("frames", "-" + str(2**70)), ("fps", "1e999"), ("latency_ms_p99", "-1e400")],
)
def test_numbers_a_database_cannot_hold_are_refused(field: str, literal: str) -> None:
    # These parse as Python numbers but fail (int) or poison (inf) every write and API read after.
    obj = json.loads(dump(TELEMETRY[0]))
    raw = json.dumps(obj | {field: 0}).replace(f'"{field}": 0', f'"{field}": {literal}')
    with pytest.raises(MessageError, match="range"):
        parse_message(Telemetry, raw.encode())
    ev = json.dumps(json.loads(dump(EVENTS[0])) | {"data": {"x": 0}}).replace('"x": 0', f'"x": {literal}')
    with pytest.raises(MessageError, match="range"):
        parse_message(Event, ev.encode())
    assert parse_message(Telemetry, json.dumps(obj | {field: 2**62}).encode())
