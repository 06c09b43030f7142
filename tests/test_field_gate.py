"""Field accuracy in the rollout gates: the two-proportion verdict, truth outranking confidence,
"no data" never pausing, and the rollout acting on it (fleet_server/field_gate.py)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.messages import Topics
from edge_agent.verdicts import Verdict, VerdictValue, combine
from fleet_server.alerts import Alerts
from fleet_server.controller import RolloutController
from fleet_server.db import Database, EventRow
from fleet_server.field_gate import METRIC, TruthCounts, field_verdict, gate_outcome
from fleet_server.quality_verdicts import WindowSample
from fleet_server.rollouts import (
    Policy,
    QualityReport,
    QualityStats,
    Rollout,
    RolloutState,
    parse_stages,
)

VALUES: tuple[VerdictValue, ...] = ("pass", "inconclusive", "fail")


def _fv(canary: tuple[int, int], baseline: tuple[int, int], min_n: int = 30) -> Verdict:
    return field_verdict(
        TruthCounts(*canary), TruthCounts(*baseline), max_drop=0.05, min_n=min_n, baseline_kind="before"
    )


# -- the verdict --------------------------------------------------------------------------------


def test_no_truth_at_all_is_no_data_not_inconclusive() -> None:
    v = _fv((0, 0), (0, 0))
    assert (v.metric, v.value) == (METRIC, "no data")
    assert combine([v]) == "inconclusive"  # nothing judged at all is still not a pass
    assert combine([v, Verdict("x", "pass", "t", 1, "")]) == "pass"


def test_same_accuracy_with_enough_truth_passes_a_clear_drop_fails() -> None:
    assert _fv((400, 392), (400, 392)).value == "pass"
    bad = _fv((400, 200), (400, 392))
    assert bad.value == "fail" and bad.test == "newcombe"
    assert bad.evidence["canary_accuracy"] == 0.5 and bad.evidence["baseline_accuracy"] == 0.98


def test_below_the_minimum_counts_is_inconclusive_even_when_all_wrong() -> None:
    assert _fv((29, 0), (400, 400)).value == "inconclusive"
    assert _fv((400, 400), (29, 29)).value == "inconclusive"
    # truth only on one side: the other has 0 < min_n
    assert _fv((400, 400), (0, 0)).value == "inconclusive"


@settings(max_examples=200, deadline=None)
@given(
    nc=st.integers(0, 300),
    nb=st.integers(0, 300),
    fc=st.floats(0, 1),
    fb=st.floats(0, 1),
    min_n=st.integers(1, 100),
)
def test_verdict_properties(nc: int, nb: int, fc: float, fb: float, min_n: int) -> None:
    c, b = (nc, round(nc * fc)), (nb, round(nb * fb))
    v = _fv(c, b, min_n)
    if nc == 0 and nb == 0:
        assert v.value == "no data"
        return
    if min(nc, nb) < min_n:
        assert v.value == "inconclusive"
    # never fails while the canary is at least as accurate as the baseline
    if nc and nb and c[1] / nc >= b[1] / nb:
        assert v.value != "fail"
    # more correct answers on the canary never make the verdict worse
    if c[1] < nc:
        better = _fv((nc, c[1] + 1), b, min_n)
        rank = {"fail": 0, "inconclusive": 1, "pass": 2}
        assert rank[better.value] >= rank[v.value]


# -- the rule: truth outranks confidence ----------------------------------------------------------


def _q(conf: VerdictValue, low: VerdictValue, err: VerdictValue) -> list[Verdict]:
    return [
        Verdict("confidence_p50", conf, "mann_whitney_u", 5, ""),
        Verdict("low_confidence_rate", low, "newcombe", 500, ""),
        Verdict("error_rate", err, "newcombe", 500, ""),
    ]


def test_the_rule_exhaustively() -> None:
    for conf, low, err in itertools.product(VALUES, repeat=3):
        q = _q(conf, low, err)
        plain = combine(q)
        for field in (*VALUES, "no data"):
            out = gate_outcome([*q, Verdict(METRIC, field, "newcombe", 100, "")])  # type: ignore[arg-type]
            if field == "fail":
                assert out == "fail"
            elif field == "pass":  # confidence metrics overruled; the error rate still counts
                assert out == {"pass": "pass", "inconclusive": "inconclusive", "fail": "fail"}[err]
            elif field == "inconclusive":
                assert out == ("fail" if plain == "fail" else "inconclusive")
            else:  # no data: exactly as without the metric
                assert out == plain


# -- the rollout acts on it -----------------------------------------------------------------------


def _windows(p50s: list[float], low: int = 0) -> tuple[WindowSample, ...]:
    return tuple(WindowSample(frames=100, confidence_p50=p, low_confidence=low) for p in p50s)


def _report(cur: tuple[WindowSample, ...], canary: TruthCounts, baseline: TruthCounts) -> QualityReport:
    base = _windows([0.95, 0.96, 0.94, 0.95, 0.97])

    def stats(ws: tuple[WindowSample, ...]) -> QualityStats:
        return QualityStats(frames=sum(w.frames for w in ws), windows=len(ws), confidence_p50=0.9)

    return QualityReport(stats(base), stats(cur), base, cur, "concurrent", canary, baseline, "concurrent")


def _at_gate() -> Rollout:
    policy = Policy(soak_s=1.0, gate_timeout_s=30.0, min_gate_frames=100, min_gate_windows=3)
    r = Rollout.create("r9", "shapes", "2.0.0", ["d0", "d1"], parse_stages("1,100%"), policy, 0.0)
    r.tick(0.0)
    for kind in ("update.started", "probation.started", "probation.passed"):
        r.on_event("d0", kind, 1.0, cmd_id=r.devices["d0"].cmd_id)
    r.tick(1.0)
    return r


GOOD_CUR = _windows([0.95, 0.96, 0.95, 0.94])
UNSURE_CUR = _windows([0.6, 0.62, 0.61, 0.6], low=40)  # less confident: the confidence metrics fail


def _stage1(r: Rollout) -> dict[str, str]:
    return {v.metric: v.verdict for v in r.verdicts if v.gate == "stage-1"}


def test_confidently_wrong_candidate_halts_on_field_accuracy() -> None:
    r = _at_gate()
    r.tick(2.0, _report(GOOD_CUR, TruthCounts(200, 40), TruthCounts(200, 196)))
    assert r.state == RolloutState.HALTED and "field accuracy" in r.reason
    assert _stage1(r) == {
        "confidence_p50": "pass",
        "low_confidence_rate": "pass",
        "error_rate": "pass",
        METRIC: "fail",
    }


def test_a_field_pass_overrides_failing_confidence_metrics() -> None:
    r = _at_gate()
    r.tick(2.0, _report(UNSURE_CUR, TruthCounts(200, 198), TruthCounts(200, 190)))
    assert r.state == RolloutState.RUNNING and r.stage == 1
    stage1 = _stage1(r)
    assert stage1["confidence_p50"] == "fail" and stage1[METRIC] == "pass"


def test_without_truth_the_metric_is_no_data_and_the_others_decide() -> None:
    r = _at_gate()
    r.tick(2.0, _report(GOOD_CUR, TruthCounts(), TruthCounts()))
    assert r.stage == 1 and _stage1(r)[METRIC] == "no data"
    r2 = _at_gate()
    r2.tick(2.0, _report(UNSURE_CUR, TruthCounts(), TruthCounts()))
    assert r2.state == RolloutState.HALTED and "field accuracy" not in r2.reason


def test_report_round_trips_with_truth() -> None:
    r = _at_gate()
    r.tick(2.0, _report(GOOD_CUR, TruthCounts(200, 198), TruthCounts(200, 190)))
    again = Rollout.model_validate(r.model_dump(mode="json"))
    assert [v.verdict for v in again.verdicts] == [v.verdict for v in r.verdicts]


# -- the controller feeds it from the stored truth.joined events (a real database) ---------------


def _joined(db: Database, device_id: str, seq: int, at: float, model: str, correct: bool) -> None:
    data = {"model": model, "label": "a", "true_label": "a" if correct else "b", "correct": correct}
    with db.session() as s:
        s.add(
            EventRow(
                device_id=device_id,
                seq=seq,
                kind="truth.joined",
                at=datetime.fromtimestamp(at, UTC),
                received_at=datetime.fromtimestamp(at, UTC),
                payload={"device_id": device_id, "seq": seq, "kind": "truth.joined", "data": data},
            )
        )
        s.commit()


def _measure(db: Database, r: Rollout) -> QualityReport:
    ctl = RolloutController(db, None, Alerts(db), Topics())
    with db.session() as s:
        return ctl._measure(s, r)


def test_controller_counts_candidate_on_canaries_and_prefers_a_concurrent_baseline(db_url: str) -> None:
    db = Database(db_url)
    db.create()
    t0 = 1_800_000_000.0
    policy = Policy(min_field_truth=3, baseline_window_s=600)
    r = Rollout.create("r1", "shapes", "2.0.0", ["d0", "d1"], parse_stages("1,100%"), policy, t0)
    r.tick(t0)
    for kind in ("update.started", "probation.started", "probation.passed"):
        r.on_event("d0", kind, t0 + 10, cmd_id=r.devices["d0"].cmd_id)
    seq = itertools.count(1)
    # before the rollout, d0 on the old version: 4 of 4 right
    for _ in range(4):
        _joined(db, "d0", next(seq), t0 - 60, "shapes@1.0.0", True)
    # after: the candidate on d0, 1 of 3 right (and a stale old-version join that must not count)
    for ok in (True, False, False):
        _joined(db, "d0", next(seq), t0 + 20, "shapes@2.0.0", ok)
    _joined(db, "d0", next(seq), t0 + 21, "shapes@1.0.0", True)
    # only 2 joins on the waiting d1: below min_field_truth → the "before" baseline
    for _ in range(2):
        _joined(db, "d1", next(seq), t0 + 20, "shapes@1.0.0", False)
    q = _measure(db, r)
    assert q.field_canary == TruthCounts(3, 1)
    assert (q.field_baseline, q.field_baseline_kind) == (TruthCounts(4, 4), "before")
    # a third join on d1 makes the concurrent baseline usable, and it is preferred
    _joined(db, "d1", next(seq), t0 + 22, "shapes@1.0.0", True)
    q = _measure(db, r)
    assert (q.field_baseline, q.field_baseline_kind) == (TruthCounts(3, 1), "concurrent")


def test_controller_without_truth_reports_nothing(db_url: str) -> None:
    db = Database(db_url)
    db.create()
    r = Rollout.create("r1", "shapes", "2.0.0", ["d0"], parse_stages("100%"), Policy(), 100.0)
    r.tick(100.0)
    for kind in ("update.started", "probation.started", "probation.passed"):
        r.on_event("d0", kind, 110.0, cmd_id=r.devices["d0"].cmd_id)
    q = _measure(db, r)
    assert (q.field_canary, q.field_baseline) == (TruthCounts(), TruthCounts())


def test_status_text_and_view_show_the_field_verdict() -> None:
    from fleet_server.cli_ops import _status_text
    from fleet_server.controller import rollout_view

    r = _at_gate()
    r.tick(2.0, _report(GOOD_CUR, TruthCounts(200, 40), TruthCounts(200, 196)))
    view = rollout_view(r)
    field = [v for v in view["verdicts"] if v["metric"] == METRIC]
    assert [(v["gate"], v["verdict"], v["test"], v["n"]) for v in field] == [
        ("stage-1", "fail", "newcombe", 200)
    ]
    assert field[0]["evidence"]["canary_truth"] == {"n": 200, "correct": 40}
    assert f"verdict stage-1 {METRIC}: FAIL (newcombe, n=200)" in _status_text(view)
