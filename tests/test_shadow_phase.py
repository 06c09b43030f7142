"""The rollout's shadow phase as a pure state machine (no database, no MQTT, no clock)."""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.agreement import AgreementTally, merge_blocks
from fleet_server.quality_verdicts import WindowSample, quality_verdicts
from fleet_server.rollouts import (
    DeviceStatus,
    Policy,
    QualityReport,
    QualityStats,
    RaiseAlert,
    Rollout,
    RolloutState,
    SendDeploy,
    SendShadowDeploy,
    SendStopShadow,
    parse_stages,
)
from fleet_server.shadow_phase import ShadowGates, ShadowStatus
from lineside_common.errors import ConfigError

LABELS = ["circle-80", "square-80", "triangle-100"]


def _rollout(n: int = 4, shadow: int = 2, soak: float = 10.0) -> Rollout:
    ids = [f"d{i}" for i in range(n)]
    return Rollout.create(
        "r1",
        "shapes",
        "2.0.2",
        ids,
        parse_stages("1,100%"),
        Policy(soak_s=1.0, resend_after_s=5.0, gate_timeout_s=30.0),
        0.0,
        shadow_devices=ids[:shadow],
        shadow_size=str(shadow),
        shadow_soak_s=soak,
        shadow_gates=ShadowGates(min_agreement=0.9, min_frames=20),
    )


def _report(agree: bool, frames: int = 60) -> dict[str, Any]:
    t = AgreementTally(LABELS, LABELS if agree else LABELS[1:] + LABELS[:1], confident=0.7)
    cand = LABELS if agree else LABELS[1:] + LABELS[:1]
    for _ in range(frames):
        t.add("circle-80", 0.99, None, cand[0], 0.99, None)
    return merge_blocks([t.block("candidate")])


def _start(r: Rollout, devices: list[str], now: float, kind: str = "shadow.started") -> None:
    assert r.shadow is not None
    for d in devices:
        assert r.on_event(d, kind, now, cmd_id=r.shadow.devices[d].cmd_id, reason="unknown_fields")


def test_no_serving_deploy_before_the_shadow_phase_passes() -> None:
    r = _rollout()
    acts = r.tick(0.0)
    assert acts == [SendShadowDeploy("d0", "r1-s0"), SendShadowDeploy("d1", "r1-s1")]
    assert all(p.status == DeviceStatus.WAITING for p in r.devices.values())
    _start(r, ["d0", "d1"], 1.0)
    assert r.tick(2.0) == [] and r.shadow is not None and r.shadow.settled_at == 2.0
    assert not r.awaiting_shadow_verdict(11.0) and r.awaiting_shadow_verdict(12.0)
    assert r.tick(12.0) == []  # the shell measures first
    acts = r.tick(12.0, shadow_report=_report(agree=True))
    assert r.shadow.state == "passed"
    assert SendStopShadow("d0", "r1-s0-stop") in acts and SendStopShadow("d1", "r1-s1-stop") in acts
    assert [a for a in acts if isinstance(a, SendDeploy)] == [SendDeploy("d0", r.devices["d0"].cmd_id)]
    assert [(v.gate, v.metric, v.verdict, v.test) for v in r.verdicts] == [
        ("shadow", "agreement", "pass", "wilson")
    ]


def test_a_confidently_wrong_candidate_halts_in_shadow_and_nothing_is_served_or_rolled_back() -> None:
    r = _rollout()
    r.tick(0.0)
    _start(r, ["d0", "d1"], 1.0)
    r.tick(2.0)
    acts = r.tick(12.0, shadow_report=_report(agree=False))
    assert r.state == RolloutState.HALTED and "shadow phase failed" in r.reason
    assert not [a for a in acts if isinstance(a, SendDeploy)]
    assert {type(a).__name__ for a in acts} == {"SendStopShadow", "RaiseAlert"}
    assert r.shadow is not None and r.shadow.evidence["confusion"] == {"circle-80": {"square-80": 60}}
    assert all(p.status == DeviceStatus.WAITING for p in r.devices.values())


def test_an_agent_that_cannot_shadow_is_reported_and_never_a_pass() -> None:
    r = _rollout(shadow=1)
    r.tick(0.0)
    _start(r, ["d0"], 1.0, kind="command.rejected")
    assert r.shadow is not None and r.shadow.devices["d0"].status == ShadowStatus.UNABLE
    r.tick(2.0)
    acts = r.tick(12.0, shadow_report=merge_blocks([]))
    assert r.state == RolloutState.PAUSED and r.awaiting_override == "shadow"
    assert [a.kind for a in acts if isinstance(a, RaiseAlert)] == ["rollout.inconclusive"]
    assert r.verdicts[0].verdict == "inconclusive" and r.verdicts[0].evidence["unable"] == ["d0"]


def test_too_few_frames_waits_then_pauses_and_an_override_resumes_it_once() -> None:
    r = _rollout()
    r.tick(0.0)
    _start(r, ["d0", "d1"], 1.0)
    r.tick(2.0)
    few = _report(agree=True, frames=5)
    assert r.tick(12.0, shadow_report=few) == [] and r.state == RolloutState.RUNNING
    acts = r.tick(42.0, shadow_report=few)  # past soak + gate_timeout
    assert r.state == RolloutState.PAUSED and isinstance(acts[-1], RaiseAlert)
    with pytest.raises(ConfigError):
        r.resume(43.0, by="bob")
    assert r.resume(43.0, by="bob", why="line stopped for lunch; agreement was 5/5")
    acts = r.tick(44.0, shadow_report=few)
    assert r.state == RolloutState.RUNNING and r.shadow is not None and r.shadow.state == "overridden"
    assert [a for a in acts if isinstance(a, SendDeploy)] == [SendDeploy("d0", r.devices["d0"].cmd_id)]
    assert [(o.gate, o.by) for o in r.overrides] == [("shadow", "bob")]


def test_abort_in_shadow_stops_the_shadows() -> None:
    r = _rollout()
    r.tick(0.0)
    _start(r, ["d0"], 1.0)
    acts = r.abort(2.0)
    assert set(acts) == {SendStopShadow("d0", "r1-s0-stop"), SendStopShadow("d1", "r1-s1-stop")}


def test_the_document_round_trips() -> None:
    r = _rollout()
    r.tick(0.0)
    _start(r, ["d0", "d1"], 1.0)
    r.tick(2.0)
    r.tick(12.0, shadow_report=_report(agree=False))
    again = Rollout.model_validate(r.model_dump(mode="json"))
    assert again == r


# -- the serving stages' statistical quality gate ------------------------------------------------


def _windows(p50s: list[float], low: int = 0, frames: int = 100) -> tuple[WindowSample, ...]:
    return tuple(WindowSample(frames=frames, confidence_p50=p, low_confidence=low) for p in p50s)


def test_quality_verdicts_name_their_tests_and_need_enough_windows() -> None:
    p = Policy(min_gate_frames=100, min_gate_windows=3)
    base = _windows([0.95, 0.96, 0.94, 0.95, 0.97, 0.96])
    good = quality_verdicts(p, base, _windows([0.95, 0.96, 0.95, 0.94]), baseline_kind="concurrent")
    assert [(v.metric, v.test, v.value) for v in good] == [
        ("confidence_p50", "mann_whitney_u", "pass"),
        ("low_confidence_rate", "newcombe", "pass"),
        ("error_rate", "newcombe", "pass"),
    ]
    assert good[0].evidence["baseline_kind"] == "concurrent"
    worse = quality_verdicts(p, base, _windows([0.5, 0.55, 0.52, 0.5], low=60), baseline_kind="before")
    assert [v.value for v in worse][:2] == ["fail", "fail"]
    few = quality_verdicts(p, base, _windows([0.95, 0.96]), baseline_kind="before")
    assert few[0].value == "inconclusive"


def _at_gate(r: Rollout) -> None:
    r.tick(0.0)
    for kind in ("update.started", "probation.started", "probation.passed"):
        r.on_event("d0", kind, 1.0, cmd_id=r.devices["d0"].cmd_id)
    r.tick(1.0)


def _plain(n: int = 2) -> Rollout:
    ids = [f"d{i}" for i in range(n)]
    policy = Policy(soak_s=1.0, gate_timeout_s=30.0, min_gate_frames=100, min_gate_windows=3)
    return Rollout.create("r2", "shapes", "2.0.0", ids, parse_stages("1,100%"), policy, 0.0)


def _quality(base: tuple[WindowSample, ...], cur: tuple[WindowSample, ...]) -> QualityReport:
    def stats(ws: tuple[WindowSample, ...]) -> QualityStats:
        f = sum(w.frames for w in ws)
        return QualityStats(
            frames=f, windows=len(ws), confidence_p50=sum(w.confidence_p50 for w in ws) / len(ws)
        )

    return QualityReport(stats(base), stats(cur), base, cur, "concurrent")


def test_a_statistical_fail_halts_and_is_recorded() -> None:
    r = _plain()
    _at_gate(r)
    base = _windows([0.95, 0.96, 0.94, 0.95, 0.97])
    r.tick(2.0, _quality(base, _windows([0.4, 0.45, 0.42, 0.41], low=80)))
    assert r.state == RolloutState.HALTED and "mann_whitney_u" in r.reason
    assert {v.metric: v.verdict for v in r.verdicts if v.gate == "stage-1"}["confidence_p50"] == "fail"


def test_an_inconclusive_gate_waits_for_windows_then_pauses_and_an_override_passes_it() -> None:
    r = _plain()
    _at_gate(r)
    base = _windows([0.95, 0.96, 0.94, 0.95, 0.97])
    short = _windows([0.95, 0.96])
    assert r.tick(2.0, _quality(base, short)) == [] and r.state == RolloutState.RUNNING
    acts = r.tick(40.0, _quality(base, short))
    assert r.state == RolloutState.PAUSED and r.awaiting_override == "stage-1"
    assert [a.kind for a in acts if isinstance(a, RaiseAlert)] == ["rollout.inconclusive"]
    assert r.resume(41.0, by="dana", why="two windows looked fine")
    r.tick(42.0, _quality(base, short))
    assert r.stage == 1 and r.state == RolloutState.RUNNING
