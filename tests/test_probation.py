"""Probation verdicts: gates vs. observed telemetry windows."""

from __future__ import annotations

from datetime import timedelta

from edge_agent.manifest import ProbationGates
from edge_agent.probation import judge, relevant_windows
from tests.updates_support import after, utc, window

GATES = ProbationGates(window_s=10.0, min_frames=50)
T0 = utc()


def test_healthy_windows_pass_after_the_window() -> None:
    ws = [window(after(T0, 5 * i), frames=40) for i in range(2)]
    assert judge(GATES, ws[:1]).verdict == "undecided"
    r = judge(GATES, ws)
    assert r.verdict == "pass" and r.evidence["frames"] == 80 and r.evidence["gates"]["window_s"] == 10.0


def test_too_few_frames_stays_undecided() -> None:
    ws = [window(after(T0, 5 * i), frames=10) for i in range(4)]
    assert judge(GATES, ws).verdict == "undecided"


def test_nonfinite_fails_at_once() -> None:
    r = judge(GATES, [window(T0, frames=5, nonfinite=5)])
    assert r.verdict == "fail" and r.failed_gates == ("max_nonfinite",) and r.evidence["nonfinite"] == 5


def test_each_gate_fails_on_its_own() -> None:
    cases = {
        "max_error_rate": {"errors": 10},
        "max_latency_p99_ms": {"p99": 80.0},
        "min_confidence_p50": {"confidence_p50": 0.4},
        "max_low_confidence_rate": {"low_confidence": 30},
    }
    for gate, kw in cases.items():
        ws = [window(after(T0, 5 * i), frames=50, **kw) for i in range(2)]  # type: ignore[arg-type]
        r = judge(GATES, ws)
        assert r.verdict == "fail" and r.failed_gates == (gate,), (gate, r)
        assert gate in r.reason


def test_windows_from_before_the_swap_or_another_model_are_ignored() -> None:
    ws = [
        window(T0 - timedelta(seconds=1), sha="old"),
        window(after(T0, 1), sha="new"),
        window(after(T0, 2), sha="other"),
        window(after(T0, 3)),
    ]
    got = relevant_windows(ws, since=T0, model_sha256="new")
    assert [w.window_start for w in got] == [after(T0, 1), after(T0, 3)]
