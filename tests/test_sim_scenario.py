"""Scenarios: mix proportions, ramps, determinism, clear errors for bad files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sim.scenario import Scenario, ScenarioError, load_scenario, resolve_scenario, scenario_from_types

BASELINE = ["circle-80", "circle-120", "square-80", "square-120", "triangle-100", "triangle-140"]


def test_builtin_scenarios_load() -> None:
    base = resolve_scenario("baseline")
    assert base.package_types == sorted(BASELINE)
    new = resolve_scenario("new-packages")
    assert set(new.package_types) == set(BASELINE) | {"hexagon-100", "circle-100"}
    assert new.weights_at(10.0).keys() == set(BASELINE)
    late = new.weights_at(new.duration_s - 1)
    assert late["hexagon-100"] + late["circle-100"] == pytest.approx(0.5, abs=0.02)
    assert new.weights_at(60.5)["hexagon-100"] == pytest.approx(0.25, abs=0.01)  # a switch, not a ramp


def test_phase_mix_proportions() -> None:
    sc = Scenario.model_validate({"phases": [{"duration_s": 100, "mix": {"circle-80": 3, "square-80": 1}}]})
    seq = sc.sequence(2000, fps=20, seed=1)
    counts = Counter(p.label for _, p in seq)
    assert counts["circle-80"] / 2000 == pytest.approx(0.75, abs=0.04)
    assert set(counts) == {"circle-80", "square-80"}


def test_phases_switch_at_their_boundaries() -> None:
    sc = Scenario.model_validate(
        {"phases": [{"duration_s": 10, "mix": {"circle-80": 1}}, {"duration_s": 10, "mix": {"square-80": 1}}]}
    )
    seq = sc.sequence(400, fps=10, seed=2)  # 40 s: past the end the last phase holds
    assert {p.label for t, p in seq if t < 10} == {"circle-80"}
    assert {p.label for t, p in seq if t >= 10} == {"square-80"}
    fitted = sc.sequence(40, fps=1, seed=2, fit=True)  # the whole scenario over 40 frames
    assert {p.label for _, p in fitted[:20]} == {"circle-80"}
    assert {p.label for _, p in fitted[20:]} == {"square-80"}


def test_ramp_brings_a_new_type_in_gradually() -> None:
    sc = Scenario.model_validate(
        {
            "phases": [
                {"duration_s": 100, "mix": {"circle-80": 1}, "mix_end": {"circle-80": 1, "hexagon-100": 1}},
            ]
        }
    )
    assert sc.weights_at(0.0) == {"circle-80": 1.0}
    assert sc.weights_at(50.0)["hexagon-100"] == pytest.approx(1 / 3)
    assert sc.weights_at(100.0)["hexagon-100"] == pytest.approx(0.5)
    seq = sc.sequence(3000, fps=30, seed=3)
    early = sum(p.label == "hexagon-100" for t, p in seq if t < 20) / sum(1 for t, _ in seq if t < 20)
    late = sum(p.label == "hexagon-100" for t, p in seq if t >= 80) / sum(1 for t, _ in seq if t >= 80)
    assert early < 0.15 < 0.35 < late


def test_sequence_is_deterministic_in_the_seed() -> None:
    sc = resolve_scenario("baseline")
    a = [p.label for _, p in sc.sequence(200, 10, seed=5)]
    assert a == [p.label for _, p in sc.sequence(200, 10, seed=5)]
    assert a != [p.label for _, p in sc.sequence(200, 10, seed=6)]


def test_types_list() -> None:
    sc = scenario_from_types("circle-80, square-120")
    assert sc.weights_at(0) == {"circle-80": 0.5, "square-120": 0.5}
    with pytest.raises(ScenarioError, match="unknown shape 'blob'"):
        scenario_from_types("circle-80,blob-1")
    with pytest.raises(ScenarioError):
        scenario_from_types("")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"phases": []}), "phases"),
        (json.dumps({"phases": [{"duration_s": -1, "mix": {"circle-80": 1}}]}), "phases.0.duration_s"),
        (json.dumps({"phases": [{"duration_s": 5, "mix": {"circle80": 1}}]}), "invalid package type"),
        (json.dumps({"phases": [{"duration_s": 5, "mix": {"circle-80": 0}}]}), "must not all be zero"),
        (json.dumps({"phases": [{"duration_s": 5, "mix": {"circle-80": 1}, "typo": 1}]}), "typo"),
    ],
)
def test_bad_file_gives_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ScenarioError, match=message) as info:
        load_scenario(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file or directory"):
        load_scenario(tmp_path / "nope.json")
