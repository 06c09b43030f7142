"""Field accuracy in the rollout gates: the one measure of a model that does not come from itself.

Pure (counts in, verdicts out). The controller counts ``truth.joined`` events with
:func:`fleet_server.accuracy.field_accuracy` — the candidate version on the canary devices, and the
old version on a concurrent baseline (devices not yet sent the release, same period) or else on the
same devices before the rollout — and hands the counts here.

The rule (docs/truth.md, "Field accuracy in rollout gates"):

- no truth at all on either side → ``no data``: shown, never pauses (plants without a checker);
- otherwise a two-proportion test (Newcombe's interval of the error-rate rise, canary minus
  baseline) with ``min_field_truth`` joined decisions a side answers pass / inconclusive / fail;
- truth outranks confidence: a field-accuracy **fail** fails the gate whatever the others say; a
  field-accuracy **pass** overrides an inconclusive or failing *confidence-based* metric
  (``confidence_p50``, ``low_confidence_rate``) — not the error rate, which is not an opinion
  of the model about itself; an inconclusive field accuracy counts like any other inconclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.verdicts import Verdict, VerdictValue, combine, rate_rise_at_most

METRIC = "field_accuracy"
CONFIDENCE_METRICS = frozenset({"confidence_p50", "low_confidence_rate"})


@dataclass(frozen=True, slots=True)
class TruthCounts:
    """Joined truth of one side: decisions with truth (``n``) and how many were right."""

    n: int = 0
    correct: int = 0


def field_verdict(
    canary: TruthCounts,
    baseline: TruthCounts,
    *,
    max_drop: float,
    min_n: int,
    baseline_kind: str,
    confidence: float = 0.95,
) -> Verdict:
    """The field-accuracy verdict of one gate: may the canary's accuracy have dropped by at most
    ``max_drop`` from the baseline's? The test is on the error rate (1 - accuracy), whose rise is
    the accuracy's drop."""
    if canary.n == 0 and baseline.n == 0:
        return Verdict(
            METRIC,
            "no data",
            "none",
            0,
            "no field truth on either side",
            {"baseline_kind": baseline_kind},
        )
    v = rate_rise_at_most(
        METRIC,
        baseline.n - baseline.correct,
        baseline.n,
        canary.n - canary.correct,
        canary.n,
        max_rise=max_drop,
        min_n=min_n,
        confidence=confidence,
    )
    reason = v.reason.replace("rise", "accuracy drop")
    ev = dict(v.evidence)
    ev.update(
        baseline_kind=baseline_kind,
        canary_accuracy=round(canary.correct / canary.n, 6) if canary.n else None,
        baseline_accuracy=round(baseline.correct / baseline.n, 6) if baseline.n else None,
        canary_truth={"n": canary.n, "correct": canary.correct},
        baseline_truth={"n": baseline.n, "correct": baseline.correct},
    )
    return Verdict(METRIC, v.value, v.test, v.n, reason, ev)


def gate_outcome(verdicts: Sequence[Verdict]) -> VerdictValue:
    """The gate's outcome with field accuracy outranking the confidence-based metrics."""
    field = next((v for v in verdicts if v.metric == METRIC), None)
    if field is not None and field.value == "fail":
        return "fail"
    if field is not None and field.value == "pass":
        return combine([v for v in verdicts if v.metric not in CONFIDENCE_METRICS])
    return combine(verdicts)


def deciding(verdicts: Sequence[Verdict], value: str) -> list[Verdict]:
    """The verdicts with ``value`` that decided the outcome (those overruled by truth left out)."""
    field = next((v for v in verdicts if v.metric == METRIC), None)
    out = [v for v in verdicts if v.value == value]
    if field is not None and field.value == "pass":
        out = [v for v in out if v.metric not in CONFIDENCE_METRICS]
    if field is not None and field.value == "fail" and value == "fail":
        out = [field] + [v for v in out if v is not field]
    return out
