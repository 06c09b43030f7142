"""The pure statistics behind every canary-versus-baseline verdict and probation's agreement gate."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.agreement import AgreementTally, judge_agreement, merge_blocks
from edge_agent.verdicts import (
    combine,
    mann_whitney_u,
    newcombe_interval,
    rate_at_least,
    rate_rise_at_most,
    shift_at_most,
    wilson_interval,
)

counts = st.integers(min_value=0, max_value=5000)


@given(n=st.integers(min_value=1, max_value=5000), data=st.data())
def test_wilson_interval_holds_the_estimate_inside_0_1(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=n))
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)


def test_wilson_interval_matches_known_values() -> None:
    # Reference: Wilson (1927) / Newcombe (1998) table, 81 of 263 → [0.2553, 0.3662] at 95 %.
    lo, hi = wilson_interval(81, 263)
    assert math.isclose(lo, 0.2553, abs_tol=5e-4) and math.isclose(hi, 0.3662, abs_tol=5e-4)


@given(n=st.integers(min_value=2, max_value=2000), data=st.data())
def test_more_samples_at_the_same_rate_narrow_the_interval(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=n))
    lo1, hi1 = wilson_interval(k, n)
    lo4, hi4 = wilson_interval(4 * k, 4 * n)
    assert hi4 - lo4 < hi1 - lo1


@given(
    k=counts,
    n=counts,
    minimum=st.floats(min_value=0.0, max_value=1.0),
    min_n=st.integers(min_value=1, max_value=200),
)
def test_a_sample_under_the_minimum_is_always_inconclusive(
    k: int, n: int, minimum: float, min_n: int
) -> None:
    k = min(k, n)
    n_small = min(n, min_n - 1)
    v = rate_at_least("agreement", min(k, n_small), n_small, minimum=minimum, min_n=min_n)
    assert v.value == "inconclusive" and v.test == "wilson"


@given(
    x1=counts,
    n1=counts,
    x2=counts,
    n2=counts,
    min_n=st.integers(min_value=1, max_value=100),
)
def test_tiny_samples_of_either_side_are_inconclusive_for_rates(
    x1: int, n1: int, x2: int, n2: int, min_n: int
) -> None:
    small = min(n2, min_n - 1)
    v = rate_rise_at_most(
        "low_confidence_rate", min(x1, n1), n1, min(x2, small), small, max_rise=0.05, min_n=min_n
    )
    assert v.value == "inconclusive"


@given(n=st.integers(min_value=50, max_value=3000), data=st.data())
def test_agreement_verdict_is_monotone_in_the_successes(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=n - 1))
    order = {"fail": 0, "inconclusive": 1, "pass": 2}
    a = rate_at_least("a", k, n, minimum=0.9, min_n=50)
    b = rate_at_least("a", k + 1, n, minimum=0.9, min_n=50)
    assert order[a.value] <= order[b.value]


def test_clear_agreement_passes_clear_disagreement_fails_the_middle_waits() -> None:
    assert rate_at_least("a", 200, 200, minimum=0.9, min_n=50).value == "pass"
    assert rate_at_least("a", 0, 60, minimum=0.9, min_n=50).value == "fail"
    assert rate_at_least("a", 54, 60, minimum=0.9, min_n=50).value == "inconclusive"


@given(x1=counts, n1=counts, x2=counts, n2=counts)
def test_newcombe_interval_contains_the_observed_difference(x1: int, n1: int, x2: int, n2: int) -> None:
    x1, x2 = min(x1, n1), min(x2, n2)
    lo, hi = newcombe_interval(x1, n1, x2, n2)
    d = (x2 / n2 if n2 else 0.0) - (x1 / n1 if n1 else 0.0)
    assert -1.0 <= lo <= d + 1e-12 and d - 1e-12 <= hi <= 1.0


def test_rate_rise_verdicts() -> None:
    assert rate_rise_at_most("e", 10, 1000, 12, 1000, max_rise=0.05, min_n=100).value == "pass"
    assert rate_rise_at_most("e", 10, 1000, 300, 1000, max_rise=0.05, min_n=100).value == "fail"


def _exact_u(a: list[float], b: list[float]) -> float:
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in itertools.product(a, b))


floats01 = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(a=st.lists(floats01, min_size=1, max_size=30), b=st.lists(floats01, min_size=1, max_size=30))
def test_mann_whitney_u_counts_pairs_and_its_p_values_are_probabilities(
    a: list[float], b: list[float]
) -> None:
    mw = mann_whitney_u(a, b)
    assert math.isclose(mw.u_a, _exact_u(a, b), abs_tol=1e-9)
    assert math.isclose(mw.u_a + mw.u_b, len(a) * len(b))
    assert 0.0 <= mw.p_a_greater <= 1.0 and 0.0 <= mw.p_a_less <= 1.0
    swapped = mann_whitney_u(b, a)
    assert math.isclose(swapped.p_a_greater, mw.p_a_less, abs_tol=1e-12)


@given(v=floats01, n1=st.integers(min_value=1, max_value=40), n2=st.integers(min_value=1, max_value=40))
def test_exact_ties_carry_no_information(v: float, n1: int, n2: int) -> None:
    mw = mann_whitney_u([v] * n1, [v] * n2)
    assert mw.u_a == n1 * n2 / 2 and mw.p_a_greater == 1.0 and mw.p_a_less == 1.0
    verdict = shift_at_most("confidence", [v] * n1, [v] * n2, max_drop=0.0, min_n=1)
    assert verdict.value == "inconclusive"


def test_mann_whitney_matches_a_hand_computed_value() -> None:
    # 8 vs 10 values, six tied pairs (3..8): U = 18; mean 40; tie-corrected variance
    # 80/12 * (19 - 36/306) = 125.88; z = (18 - 40 + 0.5)/sqrt(125.88) = -1.9163 → p = 0.02766.
    mw = mann_whitney_u([1, 2, 3, 4, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    assert mw.u_a == 18.0
    assert math.isclose(mw.p_a_less, 0.02766, abs_tol=5e-5)


@settings(max_examples=50)
@given(
    base=st.lists(st.floats(min_value=0.8, max_value=1.0), min_size=1, max_size=4),
    can=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=4),
)
def test_shift_with_fewer_windows_than_the_minimum_is_inconclusive(
    base: list[float], can: list[float]
) -> None:
    assert shift_at_most("confidence", base, can, max_drop=0.05, min_n=5).value == "inconclusive"


def test_shift_verdicts_on_clear_cases() -> None:
    base = [0.95, 0.96, 0.94, 0.95, 0.97, 0.96, 0.95, 0.94]
    assert shift_at_most("c", base, base, max_drop=0.1, min_n=5).value == "pass"
    assert shift_at_most("c", base, [v - 0.4 for v in base], max_drop=0.1, min_n=5).value == "fail"


def test_combine() -> None:
    p = rate_at_least("a", 200, 200, minimum=0.9, min_n=50)
    f = rate_at_least("a", 0, 200, minimum=0.9, min_n=50)
    i = rate_at_least("a", 0, 2, minimum=0.9, min_n=50)
    assert combine([p, p]) == "pass" and combine([p, i]) == "inconclusive" and combine([i, f]) == "fail"
    assert combine([]) == "inconclusive"


# -- agreement counting ----------------------------------------------------------------------------

OLD = ["circle-80", "square-80", "triangle-100"]


def test_rotated_labels_disagree_everywhere_and_the_confusion_shows_it() -> None:
    rotated = OLD[1:] + OLD[:1]
    t = AgreementTally(OLD, rotated, confident=0.7)
    for i in range(90):
        # The same output index, read through each manifest's labels.
        t.add(OLD[i % 3], 0.99, None, rotated[i % 3], 0.99, None)
    b = t.block("baseline")
    assert b["compared"] == 90 and b["agree"] == 0
    assert b["confusion"]["circle-80"] == {"square-80": 30}
    [v] = judge_agreement(merge_blocks([b]), min_agreement=0.9, min_frames=50)
    assert v.value == "fail"


def test_new_labels_are_apart_unless_the_baseline_was_confident() -> None:
    new = [*OLD, "hexagon-90", "oval-60"]
    t = AgreementTally(OLD, new, confident=0.7)
    t.add("circle-80", 0.5, None, "hexagon-90", 0.9, None)  # unsure old model: a new type, apart
    t.add("circle-80", 0.95, None, "oval-60", 0.9, None)  # sure old model called it a circle: disagreement
    t.add("square-80", 0.95, None, "square-80", 0.9, None)
    b = t.block("candidate")
    assert (b["candidate_only"], b["compared"], b["agree"]) == (1, 2, 1)


def test_intended_changes_are_not_disagreement() -> None:
    new = ["circle-80", "square-80", "square-80-lid", "triangle-100"]
    t = AgreementTally(OLD, new, confident=0.7, intended_changes={"square-80": ["square-80-lid"]})
    t.add("square-80", 0.95, None, "square-80-lid", 0.9, None)
    t.add("square-80", 0.95, None, "circle-80", 0.9, None)
    b = t.block("candidate")
    assert (b["intended"], b["compared"], b["agree"]) == (1, 1, 0)


def test_dimension_gate() -> None:
    t = AgreementTally(OLD, OLD, confident=0.7)
    for _ in range(60):
        t.add("circle-80", 0.99, (80.0, 80.0), "circle-80", 0.99, (95.0, 80.0))
    verdicts = judge_agreement(
        merge_blocks([t.block("c")]), min_agreement=0.9, min_frames=50, max_dimension_diff_mm=5
    )
    assert [v.value for v in verdicts] == ["pass", "fail"]


def test_merge_adds_counts_and_confusions() -> None:
    a = {"frames": 2, "compared": 2, "agree": 1, "confusion": {"x": {"x": 1, "y": 1}}}
    b = {"frames": 3, "compared": 3, "agree": 3, "confusion": {"x": {"x": 3}}}
    m = merge_blocks([a, b])
    assert (m["frames"], m["compared"], m["agree"]) == (5, 5, 4) and m["confusion"] == {"x": {"x": 4, "y": 1}}


def test_a_wildcard_intended_change_covers_new_types_from_any_old_label() -> None:
    new = [*OLD, "hexagon-90"]
    t = AgreementTally(OLD, new, confident=0.7, intended_changes={"*": ["hexagon-90"]})
    t.add("circle-80", 0.99, None, "hexagon-90", 0.9, None)  # the old model was sure, and wrong
    t.add("circle-80", 0.99, None, "square-80", 0.9, None)  # not declared: a disagreement
    b = t.block("candidate")
    assert (b["intended"], b["compared"], b["agree"]) == (1, 1, 0)
