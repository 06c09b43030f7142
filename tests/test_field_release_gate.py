"""The release gate on field truth (models/field_gate.py): McNemar's exact test, minimum counts, new labels."""

from __future__ import annotations

import itertools
import math

import pytest

from models import field_gate as G
from models.field_gate import FieldGatePolicy, PairedOutcome, judge

OLD = ["circle-80", "square-80"]
NEW = ["circle-80", "square-80", "hexagon-100"]
POLICY = FieldGatePolicy(alpha=0.05, min_shared_frames=30, min_discordant=10, new_label_min_accuracy=0.9,
                         new_label_min_frames=20)  # fmt: skip


def _pairs(
    both: int, serving_only: int, candidate_only: int, neither: int, truth: str = "circle-80"
) -> list[PairedOutcome]:
    wrong = "square-80" if truth != "square-80" else "circle-80"
    return (
        [PairedOutcome(truth, truth, truth)] * both
        + [PairedOutcome(truth, truth, wrong)] * serving_only
        + [PairedOutcome(truth, wrong, truth)] * candidate_only
        + [PairedOutcome(truth, wrong, wrong)] * neither
    )


def _new(n: int, correct: int, label: str = "hexagon-100") -> list[PairedOutcome]:
    return [PairedOutcome(label, "circle-80", label)] * correct + [
        PairedOutcome(label, "circle-80", "square-80")
    ] * (n - correct)


def test_binomial_tail_matches_the_definition() -> None:
    for n in range(0, 12):
        for k in range(-1, n + 2):
            want = sum(math.comb(n, i) for i in range(max(k, 0), n + 1)) / 2**n if k <= n else 0.0
            assert G.binomial_tail(k, n) == pytest.approx(want)
    assert G.binomial_tail(0, 0) == 1.0
    # Textbook value: 10 discordant pairs all one way, p = 2^-10.
    assert G.mcnemar_worse_p(10, 0) == pytest.approx(1 / 1024)
    assert G.mcnemar_worse_p(0, 10) == 1.0


def test_equal_models_pass() -> None:
    v = judge(_pairs(40, 0, 0, 0), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
    assert (v["verdict"], v["reason"]) == ("pass", G.PASS_NOT_WORSE)
    assert v["shared_labels"]["serving_accuracy"] == v["shared_labels"]["candidate_accuracy"] == 1.0


def test_significantly_worse_fails() -> None:
    v = judge(_pairs(30, 12, 1, 0), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
    assert (v["verdict"], v["reason"]) == ("fail", G.FAIL_WORSE)
    assert v["shared_labels"]["p_worse"] < 0.05
    assert "candidate_worse_on_shared_labels" in v["message"]


def test_worse_but_not_significant_passes() -> None:
    # b = 7, c = 5: p_worse ~ 0.39.
    v = judge(_pairs(30, 7, 5, 0), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
    assert (v["verdict"], v["reason"]) == ("pass", G.PASS_NOT_WORSE)


def test_too_few_shared_frames_is_inconclusive() -> None:
    v = judge(_pairs(29, 0, 0, 0), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
    assert (v["verdict"], v["reason"]) == ("inconclusive", G.TOO_FEW_SHARED)
    v = judge(_pairs(30, 0, 0, 0), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
    assert v["verdict"] == "pass"


def test_few_discordant_pairs_inconclusive_only_when_candidate_loses() -> None:
    v = judge(_pairs(40, 3, 1, 0), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
    assert (v["verdict"], v["reason"]) == ("inconclusive", G.TOO_FEW_DISCORDANT)
    v = judge(_pairs(40, 1, 3, 0), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
    assert (v["verdict"], v["reason"]) == ("pass", G.PASS_NOT_WORSE)
    v = judge(_pairs(40, 2, 2, 0), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
    assert v["verdict"] == "pass"


def test_exhaustive_small_tables_agree_with_the_rule() -> None:
    """Every (b, c) up to 15: the verdict is exactly the documented rule."""
    for b, c in itertools.product(range(16), repeat=2):
        v = judge(_pairs(30, b, c, 2), serving_labels=OLD, candidate_labels=OLD, policy=POLICY)
        if b + c < POLICY.min_discordant:
            want = "pass" if b <= c else "inconclusive"
        else:
            want = "fail" if G.mcnemar_worse_p(b, c) < POLICY.alpha else "pass"
        assert v["verdict"] == want, (b, c)
        assert v["shared_labels"]["serving_only_correct"] == b
        assert v["shared_labels"]["candidate_only_correct"] == c


def test_new_label_accuracy_gate() -> None:
    shared = _pairs(40, 0, 0, 0)
    ok = judge(shared + _new(20, 18), serving_labels=OLD, candidate_labels=NEW, policy=POLICY)
    assert ok["verdict"] == "pass"
    assert ok["new_labels"]["hexagon-100"] == {
        "verdict": "pass",
        "reason": "new_label_accurate",
        "frames": 20,
        "accuracy": 0.9,
    }
    low = judge(shared + _new(20, 17), serving_labels=OLD, candidate_labels=NEW, policy=POLICY)
    assert (low["verdict"], low["reason"]) == ("fail", G.FAIL_NEW_LABEL)
    few = judge(shared + _new(19, 19), serving_labels=OLD, candidate_labels=NEW, policy=POLICY)
    assert (few["verdict"], few["reason"]) == ("inconclusive", G.TOO_FEW_NEW_LABEL)
    none = judge(shared, serving_labels=OLD, candidate_labels=NEW, policy=POLICY)
    assert (none["verdict"], none["reason"]) == ("inconclusive", G.TOO_FEW_NEW_LABEL)


def test_new_label_frames_are_not_shared_frames() -> None:
    """The serving model cannot know a new label: its frames never count against it on shared labels."""
    v = judge(_pairs(40, 0, 0, 0) + _new(25, 25), serving_labels=OLD, candidate_labels=NEW, policy=POLICY)
    assert v["shared_labels"]["frames"] == 40 and v["frames"] == 65


def test_fail_outranks_inconclusive() -> None:
    v = judge(_pairs(30, 12, 0, 0) + _new(5, 5), serving_labels=OLD, candidate_labels=NEW, policy=POLICY)
    assert (v["verdict"], v["reason"]) == ("fail", G.FAIL_WORSE)
    v = judge(_pairs(10, 0, 0, 0) + _new(25, 10), serving_labels=OLD, candidate_labels=NEW, policy=POLICY)
    assert (v["verdict"], v["reason"]) == ("fail", G.FAIL_NEW_LABEL)


def test_dropped_and_unknown_labels_are_counted_apart() -> None:
    frames = _pairs(40, 0, 0, 0) + [PairedOutcome("square-80", "square-80", "circle-80")] * 3
    frames += [PairedOutcome("triangle-100", "circle-80", "circle-80")] * 2
    v = judge(frames, serving_labels=OLD, candidate_labels=["circle-80", "hexagon-100"], policy=POLICY)
    assert v["dropped_label_frames"] == 3 and v["unknown_label_frames"] == 2
    assert v["shared_labels"]["frames"] == 40


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        FieldGatePolicy(alpha=0.0)
    with pytest.raises(ValueError):
        FieldGatePolicy(new_label_min_accuracy=1.5)
    with pytest.raises(ValueError):
        FieldGatePolicy(min_discordant=-1)


def test_independence() -> None:
    ok = G.check_independence(["a", "b"], ["c"])
    assert (ok["verdict"], ok["overlap"]) == ("pass", 0)
    bad = G.check_independence(["a", "b", "c"], ["c", "b", "d"])
    assert (bad["verdict"], bad["reason"], bad["overlap"], bad["examples"]) == (
        "fail",
        G.HELDOUT_OVERLAP,
        2,
        ["b", "c"],
    )
