"""The release gate on field truth: may a candidate replace the serving model? Pure: no files, no clocks.

Both models have classified the same held-out field frames, whose true labels come from a source
independent of the training labels (downstream truth, a second labeller). Three questions:

1. **Labels both models know**: is the candidate at least as accurate as the serving model? The
   outcomes are paired (same frames), so the test is McNemar's exact test on the discordant pairs:
   ``b`` frames the serving model got right and the candidate wrong, ``c`` the other way round.
   Under H0 (equally accurate) ``b ~ Binomial(b + c, 1/2)``; the candidate is *worse* when
   ``P(X >= b) < alpha``. Fewer than ``min_shared_frames`` frames is inconclusive; fewer than
   ``min_discordant`` disagreements is inconclusive only when the candidate made more of the
   errors (``b > c``), else the candidate is not worse on the evidence there is.
2. **Labels only the candidate knows** (new package types): each must reach
   ``new_label_min_accuracy`` (its recall) on at least ``new_label_min_frames`` frames of its own.
3. **Independence**: :func:`check_independence` refuses a held-out set that shares an image with
   the training data — otherwise a mislabelling would grade itself.

The verdict is ``fail`` if any part fails, else ``inconclusive`` if any part is, else ``pass``;
``reason`` is the first part's typed code (never branch on ``message``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["pass", "fail", "inconclusive"]

# Reason codes (stable: scripts and tests branch on these).
PASS_NOT_WORSE = "not_worse_on_shared_labels"
FAIL_WORSE = "candidate_worse_on_shared_labels"
TOO_FEW_SHARED = "too_few_shared_frames"
TOO_FEW_DISCORDANT = "too_few_discordant_pairs"
FAIL_NEW_LABEL = "new_label_below_min_accuracy"
TOO_FEW_NEW_LABEL = "too_few_new_label_frames"
HELDOUT_OVERLAP = "heldout_overlaps_training"


@dataclass(frozen=True)
class FieldGatePolicy:
    """Thresholds of the field gate; see the module docstring."""

    alpha: float = 0.05
    min_shared_frames: int = 30
    min_discordant: int = 10
    new_label_min_accuracy: float = 0.9
    new_label_min_frames: int = 20

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if not 0.0 <= self.new_label_min_accuracy <= 1.0:
            raise ValueError("new_label_min_accuracy must be in [0, 1]")
        if min(self.min_shared_frames, self.min_discordant, self.new_label_min_frames) < 0:
            raise ValueError("minimum counts must be >= 0")


@dataclass(frozen=True)
class PairedOutcome:
    """One held-out frame: its true label and the top-1 label each model gave it."""

    truth: str
    serving: str
    candidate: str


def binomial_tail(k: int, n: int) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, 1/2)``, exact (integer arithmetic, any n)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def mcnemar_worse_p(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse: ``P(X >= b | b + c, 1/2)``."""
    return binomial_tail(b, b + c)


def _shared_part(outcomes: Sequence[PairedOutcome], policy: FieldGatePolicy) -> dict[str, Any]:
    n = len(outcomes)
    serving_ok = sum(o.serving == o.truth for o in outcomes)
    candidate_ok = sum(o.candidate == o.truth for o in outcomes)
    b = sum(o.serving == o.truth and o.candidate != o.truth for o in outcomes)
    c = sum(o.serving != o.truth and o.candidate == o.truth for o in outcomes)
    p_worse = mcnemar_worse_p(b, c)
    part: dict[str, Any] = {
        "frames": n,
        "serving_accuracy": serving_ok / n if n else None,
        "candidate_accuracy": candidate_ok / n if n else None,
        "serving_only_correct": b,
        "candidate_only_correct": c,
        "p_worse": p_worse,
        "p_better": mcnemar_worse_p(c, b),
    }
    if n < policy.min_shared_frames:
        verdict, reason = "inconclusive", TOO_FEW_SHARED
    elif b + c < policy.min_discordant:
        verdict, reason = ("pass", PASS_NOT_WORSE) if b <= c else ("inconclusive", TOO_FEW_DISCORDANT)
    elif p_worse < policy.alpha:
        verdict, reason = "fail", FAIL_WORSE
    else:
        verdict, reason = "pass", PASS_NOT_WORSE
    return {"verdict": verdict, "reason": reason, **part}


def _new_label_part(label: str, outcomes: Sequence[PairedOutcome], policy: FieldGatePolicy) -> dict[str, Any]:
    n = len(outcomes)
    correct = sum(o.candidate == o.truth for o in outcomes)
    accuracy = correct / n if n else None
    if n < policy.new_label_min_frames:
        verdict, reason = "inconclusive", TOO_FEW_NEW_LABEL
    elif accuracy is not None and accuracy < policy.new_label_min_accuracy:
        verdict, reason = "fail", FAIL_NEW_LABEL
    else:
        verdict, reason = "pass", "new_label_accurate"
    return {"label": label, "verdict": verdict, "reason": reason, "frames": n, "accuracy": accuracy}


def judge(
    outcomes: Iterable[PairedOutcome],
    *,
    serving_labels: Sequence[str],
    candidate_labels: Sequence[str],
    policy: FieldGatePolicy,
) -> dict[str, Any]:
    """The field gate's verdict document (JSON-ready): verdict, reason, message, and every part's evidence."""
    items = list(outcomes)
    serving, candidate = set(serving_labels), set(candidate_labels)
    shared = [o for o in items if o.truth in serving and o.truth in candidate]
    new_labels = [lab for lab in candidate_labels if lab not in serving]
    shared_part = _shared_part(shared, policy)
    new_parts = [_new_label_part(lab, [o for o in items if o.truth == lab], policy) for lab in new_labels]
    parts = [shared_part, *new_parts]
    verdict: Verdict = "pass"
    reason = shared_part["reason"]
    for wanted in ("fail", "inconclusive"):
        hit = next((p for p in parts if p["verdict"] == wanted), None)
        if hit is not None:
            verdict, reason = wanted, hit["reason"]
            break
    return {
        "verdict": verdict,
        "reason": reason,
        "message": _message(verdict, reason, shared_part, new_parts),
        "policy": {
            "alpha": policy.alpha,
            "min_shared_frames": policy.min_shared_frames,
            "min_discordant": policy.min_discordant,
            "new_label_min_accuracy": policy.new_label_min_accuracy,
            "new_label_min_frames": policy.new_label_min_frames,
        },
        "frames": len(items),
        "shared_labels": shared_part,
        "new_labels": {p["label"]: {k: v for k, v in p.items() if k != "label"} for p in new_parts},
        "dropped_label_frames": sum(o.truth in serving and o.truth not in candidate for o in items),
        "unknown_label_frames": sum(o.truth not in serving and o.truth not in candidate for o in items),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _message(verdict: str, reason: str, shared: dict[str, Any], new: list[dict[str, Any]]) -> str:
    head = (
        f"field gate {verdict} ({reason}): shared labels {shared['frames']} frames, candidate "
        f"{_pct(shared['candidate_accuracy'])} vs serving {_pct(shared['serving_accuracy'])} "
        f"(serving-only correct {shared['serving_only_correct']}, candidate-only correct "
        f"{shared['candidate_only_correct']}, McNemar p_worse {shared['p_worse']:.3g})"
    )
    tails = [f"{p['label']} {_pct(p['accuracy'])} on {p['frames']} frames" for p in new]
    return head + (f"; new labels: {', '.join(tails)}" if tails else "")


def check_independence(train_images: Iterable[str], heldout_images: Iterable[str]) -> dict[str, Any]:
    """Refuse a held-out set sharing any image (by SHA-256) with the training data.

    ``{"verdict": "pass" | "fail", "reason", "overlap": count, "examples": [first 5 shas]}``.
    """
    overlap = sorted(set(train_images) & set(heldout_images))
    if overlap:
        return {
            "verdict": "fail",
            "reason": HELDOUT_OVERLAP,
            "overlap": len(overlap),
            "examples": overlap[:5],
            "message": f"the held-out set shares {len(overlap)} images with the training data: "
            "a mislabelling would grade itself",
        }
    return {"verdict": "pass", "reason": "independent", "overlap": 0, "examples": [], "message": ""}
