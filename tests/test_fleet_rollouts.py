"""The pure rollout state machine: stages, device transitions, failure and quality gates, pause/resume/abort."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.rollouts import (
    DeviceStatus,
    Policy,
    QualityReport,
    QualityStats,
    RaiseAlert,
    Rollout,
    RolloutState,
    SendDeploy,
    SendRollback,
    StageSize,
    failure_gate,
    parse_stages,
    plan_stages,
    quality_gate,
    summarize,
)
from lineside_common.errors import ConfigError

GOOD = QualityStats(frames=500, windows=10, confidence_p50=0.9, low_confidence_rate=0.03)
BAD = QualityStats(frames=500, windows=10, confidence_p50=0.55, low_confidence_rate=0.7)


def _policy(**kw: object) -> Policy:
    base: dict[str, object] = {
        "soak_s": 10,
        "max_failure_rate": 0.1,
        "min_gate_frames": 50,
        "resend_after_s": 5,
        "max_sends": 3,
    }
    base.update(kw)
    return Policy.model_validate(base)


def _rollout(n: int = 4, stages: str = "1,100%", **kw: object) -> Rollout:
    return Rollout.create(
        "r1", "shapes", "2.0.0", [f"d{i}" for i in range(n)], parse_stages(stages), _policy(**kw), 0.0
    )


def _pass(r: Rollout, devices: list[str], now: float) -> None:
    for d in devices:
        cmd = r.devices[d].cmd_id
        for kind in (
            "update.started",
            "update.verified",
            "update.installed",
            "probation.started",
            "probation.passed",
        ):
            r.on_event(d, kind, now, cmd_id=cmd)


# -- parsing ------------------------------------------------------------------------------------


def test_parse_stages() -> None:
    assert parse_stages("1,25%,100%") == [StageSize(count=1), StageSize(percent=25), StageSize(percent=100)]
    for bad in ("", "0", "1,,2", "150%", "0%", "x", "-1"):
        with pytest.raises(ConfigError):
            parse_stages(bad)


def test_plan_stages_cumulative_and_drops_empty() -> None:
    ids = [f"d{i}" for i in range(8)]
    assert [len(s) for s in plan_stages(ids, parse_stages("1,25%,100%"))] == [1, 1, 6]
    assert [len(s) for s in plan_stages(ids[:1], parse_stages("1,25%,100%"))] == [1]
    assert [len(s) for s in plan_stages(ids[:3], parse_stages("1,25%,100%"))] == [1, 2]
    assert plan_stages(ids[:2], parse_stages("50%")) == [["d0"]]  # a rollout may stop short of everyone
    with pytest.raises(ConfigError):
        plan_stages(["a", "a"], parse_stages("100%"))


@given(
    n=st.integers(1, 300),
    sizes=st.lists(
        st.one_of(st.integers(1, 400).map(str), st.integers(1, 100).map(lambda p: f"{p}%")),
        min_size=1,
        max_size=6,
    ),
)
@settings(max_examples=200, deadline=None)
def test_plan_stages_properties(n: int, sizes: list[str]) -> None:
    ids = [f"d{i}" for i in range(n)]
    plan = plan_stages(ids, parse_stages(",".join(sizes)))
    flat = [d for s in plan for d in s]
    assert flat == ids[: len(flat)]  # order kept, no duplicates, a prefix of the list
    assert all(plan)  # no empty stage
    if sizes[-1] == "100%":
        assert len(flat) == n


# -- gates ---------------------------------------------------------------------------------------


def test_summarize_is_frame_weighted() -> None:
    s = summarize([(100, 0.9, 10), (300, 0.5, 150), (0, 0.1, 0)])
    assert s.frames == 400 and s.windows == 2
    assert s.confidence_p50 == pytest.approx((90 + 150) / 400)
    assert s.low_confidence_rate == pytest.approx(160 / 400)
    assert summarize([]) == QualityStats()


def test_failure_gate_threshold_is_strict() -> None:
    p = _policy(max_failure_rate=0.25)
    assert failure_gate(p, 0, 4) is None
    assert failure_gate(p, 1, 4) is None  # exactly at the threshold passes
    assert "2 of 4" in (failure_gate(p, 2, 4) or "")


def test_quality_gate() -> None:
    p = _policy(max_confidence_p50_drop=0.1, max_low_confidence_rate_rise=0.1)
    assert quality_gate(p, GOOD, GOOD) is None
    assert "confidence p50 dropped" in (quality_gate(p, GOOD, BAD) or "")
    slight = QualityStats(frames=500, confidence_p50=0.82, low_confidence_rate=0.1)
    assert quality_gate(p, GOOD, slight) is None
    more_low = QualityStats(frames=500, confidence_p50=0.9, low_confidence_rate=0.2)
    assert "low-confidence rate rose" in (quality_gate(p, GOOD, more_low) or "")
    better = QualityStats(frames=500, confidence_p50=0.99, low_confidence_rate=0.0)
    assert quality_gate(p, GOOD, better) is None


# -- the machine ---------------------------------------------------------------------------------


def test_good_rollout_goes_stage_by_stage() -> None:
    r = _rollout(4, "1,100%")
    acts = r.tick(0.0)
    assert acts == [SendDeploy("d0", r.devices["d0"].cmd_id)]
    assert [p.status for p in r.devices.values()] == [DeviceStatus.SENT] + [DeviceStatus.WAITING] * 3
    _pass(r, ["d0"], 1.0)
    assert r.tick(2.0) == []  # settled: soaking
    assert r.stage_settled_at == 2.0
    assert not r.awaiting_gate(11.0) and r.awaiting_gate(12.0)
    assert r.tick(12.0) == []  # needs the quality report
    acts = r.tick(12.0, QualityReport(GOOD, GOOD))
    assert r.stage == 1
    assert sorted(a.device_id for a in acts if isinstance(a, SendDeploy)) == ["d1", "d2", "d3"]
    _pass(r, ["d1", "d2", "d3"], 13.0)
    r.tick(14.0)
    assert r.tick(24.0, QualityReport(GOOD, GOOD)) == []
    assert r.state == RolloutState.SUCCEEDED
    assert all(p.status == DeviceStatus.PASSED for p in r.devices.values())


def test_canary_with_worse_confidence_halts_and_rolls_back_only_the_canary() -> None:
    r = _rollout(4, "1,100%")
    r.tick(0.0)
    _pass(r, ["d0"], 1.0)
    r.tick(2.0)
    acts = r.tick(12.0, QualityReport(GOOD, BAD))
    assert r.state == RolloutState.HALTED
    assert "confidence p50 dropped" in r.reason
    assert [a for a in acts if isinstance(a, SendRollback)] == [
        SendRollback("d0", r.devices["d0"].cmd_id + "-rb", r.reason)
    ]
    alerts = [a for a in acts if isinstance(a, RaiseAlert)]
    assert len(alerts) == 1 and "confidence" in alerts[0].message and "d0" in alerts[0].message
    assert not any(isinstance(a, SendDeploy) for a in acts)
    assert {r.devices[d].status for d in ("d1", "d2", "d3")} == {DeviceStatus.WAITING}
    assert r.tick(100.0, QualityReport(GOOD, GOOD)) == []  # halted stays halted


def test_probation_failure_halts_at_once() -> None:
    r = _rollout(10, "2,100%", max_failure_rate=0.4)
    r.tick(0.0)
    r.on_event("d0", "rollback", 1.0, cmd_id=r.devices["d0"].cmd_id, reason="probation failed")
    assert r.devices["d0"].status == DeviceStatus.FAILED and r.devices["d0"].reason == "probation failed"
    acts = r.tick(1.5)  # 1 of 2 = 50% > 40%: halt now, without waiting for d1
    assert r.state == RolloutState.HALTED
    assert [a.device_id for a in acts if isinstance(a, SendRollback)] == ["d1"]  # d0 rolled itself back


def test_failures_under_the_threshold_do_not_halt() -> None:
    r = _rollout(10, "100%", max_failure_rate=0.2)
    r.tick(0.0)
    r.on_event("d0", "update.failed", 1.0, cmd_id=r.devices["d0"].cmd_id)
    r.on_event("d1", "update.rejected", 1.0, cmd_id=r.devices["d1"].cmd_id)
    _pass(r, [f"d{i}" for i in range(2, 10)], 1.0)
    r.tick(2.0)
    r.tick(12.0, QualityReport(GOOD, GOOD))
    assert r.state == RolloutState.SUCCEEDED


def test_resend_then_give_up() -> None:
    r = _rollout(1, "100%", resend_after_s=5, max_sends=3, max_failure_rate=0.5)
    assert len(r.tick(0.0)) == 1
    assert r.tick(4.9) == []
    (a,) = r.tick(5.0)
    assert isinstance(a, SendDeploy) and a.cmd_id == r.devices["d0"].cmd_id  # same cmd_id: idempotent
    assert len(r.tick(10.0)) == 1
    acts = r.tick(15.0)
    assert r.devices["d0"].status == DeviceStatus.FAILED and "no answer" in r.devices["d0"].reason
    assert r.state == RolloutState.HALTED and any(isinstance(x, RaiseAlert) for x in acts)


def test_device_timeout_counts_as_failure() -> None:
    r = _rollout(1, "100%", device_timeout_s=30, max_failure_rate=0.5)
    r.tick(0.0)
    r.on_event("d0", "probation.started", 1.0, cmd_id=r.devices["d0"].cmd_id)
    r.tick(29.0)
    assert r.devices["d0"].status == DeviceStatus.PROBATION
    r.tick(30.0)
    assert r.devices["d0"].status == DeviceStatus.FAILED and r.state == RolloutState.HALTED


def test_events_are_idempotent_and_never_go_backwards() -> None:
    r = _rollout(1, "100%")
    r.tick(0.0)
    cmd = r.devices["d0"].cmd_id
    assert r.on_event("d0", "probation.started", 1.0, cmd_id=cmd)
    assert not r.on_event("d0", "update.started", 1.1, cmd_id=cmd)  # late, reordered
    assert r.devices["d0"].status == DeviceStatus.PROBATION
    assert r.on_event("d0", "probation.passed", 2.0, cmd_id=cmd)
    assert not r.on_event("d0", "probation.passed", 2.5, cmd_id=cmd)
    assert r.devices["d0"].passed_at == 2.0
    assert not r.on_event("d0", "rollback", 3.0, cmd_id="someone-else")  # another command's answer
    assert not r.on_event("stranger", "rollback", 3.0)
    assert r.on_event("d0", "rollback", 3.0, cmd_id=cmd)  # the agent rolled back after passing
    assert r.devices["d0"].status == DeviceStatus.FAILED


def test_not_enough_telemetry_waits_then_halts() -> None:
    r = _rollout(1, "100%", soak_s=10, gate_timeout_s=20, min_gate_frames=100)
    r.tick(0.0)
    _pass(r, ["d0"], 1.0)
    r.tick(1.0)
    few = QualityReport(GOOD, QualityStats(frames=10, confidence_p50=0.9))
    assert r.tick(11.0, few) == [] and r.state == RolloutState.RUNNING
    r.tick(31.0, few)
    assert r.state == RolloutState.HALTED and "not enough telemetry" in r.reason


def test_no_baseline_is_inconclusive_pauses_with_an_alert_and_resumes_only_with_a_reason() -> None:
    r = _rollout(1, "100%")
    r.tick(0.0)
    _pass(r, ["d0"], 1.0)
    r.tick(1.0)
    acts = r.tick(11.0, QualityReport(QualityStats(), GOOD))
    assert r.state == RolloutState.PAUSED and r.awaiting_override == "baseline"
    [alert] = acts
    assert isinstance(alert, RaiseAlert) and alert.kind == "rollout.inconclusive"
    assert [(v.gate, v.metric, v.verdict) for v in r.verdicts] == [("baseline", "baseline", "inconclusive")]
    with pytest.raises(ConfigError):
        r.resume(12.0)
    assert r.state == RolloutState.PAUSED
    assert r.resume(12.0, by="alice", why="new line, no history yet")
    assert [(o.gate, o.by) for o in r.overrides] == [("baseline", "alice")]
    assert r.tick(13.0, QualityReport(QualityStats(), GOOD)) == []  # the same verdict: no second pause
    assert r.state == RolloutState.SUCCEEDED


def test_no_baseline_passes_only_when_the_policy_says_so_and_that_is_recorded() -> None:
    r = _rollout(1, "100%")
    r.policy = r.policy.model_copy(update={"no_baseline": "pass"})
    r.tick(0.0)
    _pass(r, ["d0"], 1.0)
    r.tick(1.0)
    r.tick(11.0, QualityReport(QualityStats(), GOOD))
    assert r.state == RolloutState.SUCCEEDED
    assert [(v.metric, v.verdict, v.test) for v in r.verdicts] == [("baseline", "pass", "policy")]


def test_pause_resume_abort() -> None:
    r = _rollout(3, "1,100%")
    r.tick(0.0)
    assert r.pause(0.5) and not r.pause(0.6)
    _pass(r, ["d0"], 1.0)  # events still tracked while paused
    assert r.devices["d0"].status == DeviceStatus.PASSED
    assert r.tick(50.0, QualityReport(GOOD, GOOD)) == [] and r.stage == 0  # nothing advances
    assert r.resume(51.0) and not r.resume(52.0)
    r.tick(51.0)
    acts = r.tick(61.0, QualityReport(GOOD, GOOD))
    assert r.stage == 1 and len(acts) == 2
    acts = r.abort(62.0, rollback=True)
    assert r.state == RolloutState.ABORTED
    assert sorted(a.device_id for a in acts if isinstance(a, SendRollback)) == ["d0", "d1", "d2"]
    assert r.abort(63.0) == [] and not r.resume(63.0) and not r.pause(63.0)


def test_abort_without_rollback_sends_nothing() -> None:
    r = _rollout(2, "100%")
    r.tick(0.0)
    assert r.abort(1.0) == [] and r.state == RolloutState.ABORTED


def test_serialises_round_trip() -> None:
    r = _rollout(5, "1,25%,100%")
    r.tick(0.0)
    _pass(r, ["d0"], 1.0)
    again = Rollout.model_validate(r.model_dump(mode="json"))
    assert again == r
    assert again.tick(2.0) == r.tick(2.0)


EVENTS = [
    "update.started",
    "update.verified",
    "update.installed",
    "probation.started",
    "probation.passed",
    "rollback",
    "update.failed",
    "update.rejected",
    "pong",
]


@given(
    n=st.integers(1, 12),
    script=st.lists(st.tuples(st.integers(0, 11), st.sampled_from(EVENTS), st.booleans()), max_size=60),
    bad=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_invariants_under_any_event_order(n: int, script: list[tuple[int, str, bool]], bad: bool) -> None:
    """Whatever devices say and in whatever order: deploys only go to started stages, every
    device that was sent the release and not settled gets a rollback on a halt, and replaying the
    whole script again changes nothing."""
    r = Rollout.create(
        "r1",
        "m",
        "2",
        [f"d{i}" for i in range(n)],
        parse_stages("1,50%,100%"),
        _policy(soak_s=0, max_failure_rate=0.3, min_gate_frames=1),
        0.0,
    )
    deployed: set[str] = set()
    t = 0.0
    report = QualityReport(GOOD, BAD if bad else GOOD)
    for i, kind, tick in script:
        d = f"d{i % n}"
        r.on_event(d, kind, t, cmd_id=r.devices[d].cmd_id)
        if tick:
            t += 1.0
            for a in r.tick(t, report):
                if isinstance(a, SendDeploy):
                    assert r.devices[a.device_id].stage <= r.stage
                    deployed.add(a.device_id)
                elif isinstance(a, SendRollback):
                    assert a.device_id in deployed
    before = r.model_dump()
    for i, kind, _ in script:  # a redelivery of every event
        d = f"d{i % n}"
        r.on_event(d, kind, t, cmd_id=r.devices[d].cmd_id)
    if r.state != RolloutState.RUNNING:
        assert r.model_dump() == before
    if r.state == RolloutState.HALTED:
        assert not any(
            p.status
            in (DeviceStatus.SENT, DeviceStatus.INSTALLING, DeviceStatus.PROBATION, DeviceStatus.PASSED)
            for p in r.devices.values()
        )
    if r.state == RolloutState.SUCCEEDED:
        assert not bad or not any(p.status == DeviceStatus.PASSED for p in r.devices.values())


def test_state_confirms_a_device_whose_events_were_lost() -> None:
    r = _rollout(2, "100%")
    r.tick(10.0)
    assert not r.on_state("d0", "2.0.0", False, 9.0, 12.0)  # state older than our deploy
    assert not r.on_state("d0", "2.0.0", True, 11.0, 12.0)  # still in probation
    assert not r.on_state("d0", "1.0.0", False, 11.0, 12.0)  # still the old model
    assert r.on_state("d0", "2.0.0", False, 11.0, 12.0)
    assert r.devices["d0"].status == DeviceStatus.PASSED and r.devices["d0"].passed_at == 12.0
    assert not r.on_state("d0", "2.0.0", False, 11.0, 13.0)  # idempotent
    assert not r.on_state("d1", "2.0.0", False, 5.0, 13.0)
