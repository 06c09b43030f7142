"""Drift detection on the device (pure): thresholds, sustain, once per episode, cleared."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.drift import DriftDetector, WindowConfidence, check_window
from edge_agent.manifest import ConfidenceBaseline, DriftThresholds

BASE = ConfidenceBaseline(mean=0.93, p05=0.75, p50=0.97, low_confidence_rate=0.04)
TH = DriftThresholds(low_confidence=0.7, max_p50_drop=0.10, max_low_confidence_rate=0.15, sustain_windows=2)


def healthy(frames: int = 100) -> WindowConfidence:
    return WindowConfidence(frames, 0.93, 0.76, 0.96, 0.05)


def drifted(frames: int = 100) -> WindowConfidence:
    return WindowConfidence(frames, 0.70, 0.30, 0.80, 0.40)


def test_check_window_names_each_breach() -> None:
    assert not check_window(healthy(), BASE, TH).breached
    c = check_window(drifted(), BASE, TH)
    assert c.breached and len(c.reasons) == 2
    only_rate = check_window(WindowConfidence(100, 0.9, 0.5, 0.95, 0.2), BASE, TH)
    assert only_rate.breached and "low-confidence rate" in only_rate.reasons[0]
    only_p50 = check_window(WindowConfidence(100, 0.9, 0.5, 0.85, 0.1), BASE, TH)
    assert only_p50.breached and "median" in only_p50.reasons[0]


def test_low_confidence_limit_never_below_the_released_rate() -> None:
    base = BASE.model_copy(update={"low_confidence_rate": 0.3})
    assert not check_window(WindowConfidence(100, 0.9, 0.5, 0.95, 0.25), base, TH).breached
    assert check_window(WindowConfidence(100, 0.9, 0.5, 0.95, 0.35), base, TH).breached


def test_one_event_per_episode_after_sustain_then_cleared() -> None:
    d = DriftDetector(BASE, TH)
    assert d.update(healthy()) is None
    assert d.update(drifted()) is None  # one window is not sustained
    start = d.update(drifted())
    assert start is not None and start.state == "drifting" and d.drifting
    assert start.evidence["baseline"]["p50"] == 0.97
    assert len(start.evidence["windows"]) == 2 and all(w["breached"] for w in start.evidence["windows"])
    for _ in range(10):
        assert d.update(drifted()) is None  # still the same episode
    assert d.update(healthy()) is None
    end = d.update(healthy())
    assert end is not None and end.state == "cleared" and not d.drifting


def test_interrupted_streak_does_not_fire() -> None:
    d = DriftDetector(BASE, TH)
    for _ in range(20):
        assert d.update(drifted()) is None or d.drifting
        if d.drifting:
            break
        assert d.update(healthy()) is None
    assert not d.drifting


def test_windows_with_too_few_frames_are_neutral() -> None:
    d = DriftDetector(BASE, TH, min_frames=10)
    assert d.update(drifted()) is None
    assert d.update(drifted(frames=3)) is None  # line stopped: neither counts nor resets
    change = d.update(drifted())
    assert change is not None and change.state == "drifting"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=60), st.integers(1, 4))
def test_changes_alternate_and_need_sustained_streaks(pattern: list[bool], sustain: int) -> None:
    d = DriftDetector(BASE, TH.model_copy(update={"sustain_windows": sustain}))
    states = []
    streak_ok = []
    run = 0
    prev = None
    for bad in pattern:
        run = run + 1 if bad == prev else 1
        prev = bad
        c = d.update(drifted() if bad else healthy())
        if c is not None:
            states.append(c.state)
            streak_ok.append(run >= sustain and (c.state == "drifting") == bad)
    assert all(streak_ok)
    # drifting, cleared, drifting, ...: never two of the same in a row
    assert all(a != b for a, b in itertools.pairwise(states))
    if states:
        assert states[0] == "drifting"


def test_small_windows_are_pooled_before_they_are_judged() -> None:
    # 10-frame windows: one partial package is a 10 % rate. Alone, two such windows in a row would
    # fire; pooled into 60-frame judgements, the 1-in-10 blips average out to a healthy rate.
    d = DriftDetector(BASE, TH, pool_frames=60)
    blip = WindowConfidence(10, 0.9, 0.5, 0.96, 0.2)
    calm = WindowConfidence(10, 0.95, 0.8, 0.97, 0.0)
    for _ in range(10):
        for w in (blip, calm, calm, calm, calm, calm):
            assert d.update(w) is None
    assert not d.drifting
    # A real shift still fires, once, as soon as two pooled judgements in a row breach: the pool
    # slides, so that is when most of a 60-frame pool comes after the shift, not two pools later.
    changes = [d.update(drifted(frames=10)) for _ in range(12)]
    fired = [i for i, c in enumerate(changes) if c is not None]
    assert len(fired) == 1 and changes[fired[0]].state == "drifting"  # type: ignore[union-attr]
    assert fired[0] < 6
    assert all(w["frames"] == 60 for w in changes[fired[0]].evidence["windows"])  # type: ignore[union-attr]
