"""The update-window policy, the line-state parser and the rollout's DEFERRED state: pure, exhaustive."""

from __future__ import annotations

import itertools

import pytest

from edge_agent.line_state import LineReading, LineStateBoard, parse_line_state
from edge_agent.update_window import LINE_STATES, UNKNOWN, Defer, Swap, WindowPolicy, decide
from fleet_server.rollouts import DeviceStatus, Policy, Rollout, RolloutState, parse_stages
from lineside_common.errors import LineStateError

STATES = (*LINE_STATES, UNKNOWN)
ALLOWED_SETS = (frozenset(), frozenset({"idle"}), frozenset({"idle", "stopped"}), frozenset(LINE_STATES))


def test_no_window_swaps_in_every_state() -> None:
    for state, changeover, waited in itertools.product(STATES, (False, True), (0.0, 1e9)):
        assert decide(WindowPolicy(), state, changeover, waited) == Swap("any_state")


@pytest.mark.parametrize("allowed", ALLOWED_SETS)
@pytest.mark.parametrize("changeover_allowed", [False, True])
@pytest.mark.parametrize("deadline", [None, 60.0])
@pytest.mark.parametrize("at_deadline", ["wait", "proceed"])
def test_every_case_against_the_rules(
    allowed: frozenset[str], changeover_allowed: bool, deadline: float | None, at_deadline: str
) -> None:
    policy = WindowPolicy(allowed, changeover_allowed, deadline, at_deadline)  # type: ignore[arg-type]
    for state, changeover, waited in itertools.product(STATES, (False, True), (0.0, 59.9, 60.0, 1e6)):
        v = decide(policy, state, changeover, waited)
        past = deadline is not None and waited >= deadline
        if changeover and changeover_allowed:
            assert v == Swap("changeover")
        elif state in allowed:
            assert v == Swap("allowed_state")
        elif past and at_deadline == "proceed":
            assert v == Swap("deadline_proceed")
        elif past:
            assert v == Defer("deadline_passed", alert=True)
        else:
            # An unknown state is never read as allowed: it defers, and says why.
            assert v == Defer("state_unknown" if state == UNKNOWN else "state_not_allowed")
        # Never a silent swap in a state that is not allowed before the deadline.
        if isinstance(v, Swap) and state not in allowed and not (changeover and changeover_allowed):
            assert past and at_deadline == "proceed"


def test_policy_refuses_unknown_state_names() -> None:
    with pytest.raises(ValueError, match="unknown line state"):
        WindowPolicy(frozenset({"running"}))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"Execute", LineReading("execute")),
        (b" idle\n", LineReading("idle")),
        (b'"Held"', LineReading("held")),
        (b'{"state": "Stopped", "changeover": true}', LineReading("stopped", True)),
        (b'{"changeover": true}', LineReading(UNKNOWN, True)),
    ],
)
def test_line_state_payloads(payload: bytes, expected: LineReading) -> None:
    assert parse_line_state(payload) == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"Dancing", "bad_value"),
        (b'{"state": "Running"}', "bad_value"),
        (b'{"state": 3}', "bad_shape"),
        (b'{"state": "Idle", "changeover": "yes"}', "bad_shape"),
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"x" * 5000, "too_large"),
        (b"[1, 2]", "bad_shape"),
    ],
)
def test_bad_line_state_payloads_have_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(LineStateError) as exc:
        parse_line_state(payload)
    assert exc.value.reason == reason


def test_board_reports_changes_only() -> None:
    board = LineStateBoard(clock=lambda: 0.0)
    seen: list[tuple[str, str]] = []
    board.add_listener(lambda old, new: seen.append((old.state, new.state)))
    assert board.set(LineReading("execute"), "t")
    assert not board.set(LineReading("execute"), "t")
    assert board.set_unknown("t")
    assert seen == [(UNKNOWN, "execute"), ("execute", UNKNOWN)]


# -- the rollout's side: a deferred device neither fails nor times out -----------------------------


def _rollout(device_timeout_s: float = 30.0) -> Rollout:
    policy = Policy.model_validate(
        {"soak_s": 0, "device_timeout_s": device_timeout_s, "max_failure_rate": 0.0}
    )
    return Rollout.create("r1", "shapes", "2.0.0", ["d0"], parse_stages("100%"), policy, 0.0)


def test_deferred_device_does_not_time_out_and_the_clock_resumes_after() -> None:
    r = _rollout(device_timeout_s=30)
    r.tick(0.0)
    cmd = r.devices["d0"].cmd_id
    r.on_event("d0", "update.started", 1.0, cmd_id=cmd)
    assert r.on_event("d0", "update.deferred", 5.0, cmd_id=cmd, reason="state_not_allowed")
    p = r.devices["d0"]
    assert p.status == DeviceStatus.DEFERRED and p.reason == "state_not_allowed"
    r.tick(1000.0)  # far past device_timeout_s while deferred
    assert p.status == DeviceStatus.DEFERRED and r.state == RolloutState.RUNNING
    assert r.summary()["stages"][0]["counts"] == {"deferred": 1}
    # The deadline alert updates the reason; a re-delivered update.started changes nothing.
    assert r.on_event("d0", "update.deferred", 1001.0, cmd_id=cmd, reason="deadline_passed")
    assert not r.on_event("d0", "update.started", 1002.0, cmd_id=cmd)
    # The window opens at 1010: 5 s before deferral + time after 1010 count against the timeout.
    r.on_event("d0", "update.installed", 1010.0, cmd_id=cmd)
    assert p.status == DeviceStatus.INSTALLING and p.deferred_total_s == pytest.approx(1005.0)
    r.tick(1034.0)
    assert p.status == DeviceStatus.INSTALLING
    r.tick(1036.0)  # 5 + 26 = 31 s outside DEFERRED
    assert p.status == DeviceStatus.FAILED


def test_deferred_device_passes_through_probation() -> None:
    r = _rollout()
    r.tick(0.0)
    cmd = r.devices["d0"].cmd_id
    r.on_event("d0", "update.deferred", 1.0, cmd_id=cmd, reason="state_unknown")
    r.on_event("d0", "update.installed", 50.0, cmd_id=cmd)
    r.on_event("d0", "probation.started", 50.0, cmd_id=cmd)
    r.on_event("d0", "probation.passed", 60.0, cmd_id=cmd)
    assert r.devices["d0"].status == DeviceStatus.PASSED
    assert not r.on_event("d0", "update.deferred", 61.0, cmd_id=cmd, reason="late")


def test_a_halted_rollout_rolls_back_a_deferred_device() -> None:
    r = _rollout()
    r.tick(0.0)
    r.on_event("d0", "update.deferred", 1.0, cmd_id=r.devices["d0"].cmd_id, reason="state_not_allowed")
    actions = r.abort(2.0, rollback=True)
    assert [type(a).__name__ for a in actions] == ["SendRollback"]
    assert r.devices["d0"].status == DeviceStatus.ROLLED_BACK


def test_an_agent_restarted_while_deferred_gets_the_deploy_again() -> None:
    r = _rollout()
    r.tick(0.0)
    p = r.devices["d0"]
    r.on_event("d0", "update.deferred", 10.0, cmd_id=p.cmd_id, reason="state_not_allowed")
    assert not r.on_restart("d0", since=5.0, now=20.0)  # the state of the run that deferred
    assert r.on_restart("d0", since=15.0, now=20.0)  # a newer run: its staged model is gone
    assert p.status == DeviceStatus.SENT and p.deferred_total_s == pytest.approx(10.0)
    actions = r.tick(20.0)
    assert [type(a).__name__ for a in actions] == ["SendDeploy"] and p.sends == 2


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"line": {"allowed_states": ["running"]}}, "line.allowed_states"),
        ({"line": {"source": "opcua"}}, "line"),
        ({"line": {"at_deadline": "maybe"}}, "line.at_deadline"),
        ({"opcua": {"endpoint": "http://x"}}, "opcua.endpoint"),
    ],
)
def test_bad_robot_side_config_names_the_field(section: dict[str, object], field: str) -> None:
    from edge_agent.config import parse_config
    from lineside_common.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        parse_config({"device_id": "r", "source": {"uri": "/x"}, **section})
    assert exc.value.field == field
