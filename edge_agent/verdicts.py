"""Statistical verdicts: pass, inconclusive or fail, each with its test, its sample and its reason.

Pure (no files, clocks or sockets) and dependency-free beyond the standard library, because the
device judges probation with it and the agent must install without scipy. The fleet server uses
the same functions for its rollout gates, so a verdict means the same thing on both sides.

Every judgement follows one rule: below the minimum sample the answer is ``inconclusive`` (a
tiny sample proves nothing either way); otherwise a confidence interval (or a one-sided test) is
compared with the gate — entirely on the good side → ``pass``, entirely on the bad side →
``fail``, straddling it → ``inconclusive``. Bare point estimates never decide.

The tests:

- ``wilson``: Wilson score interval of one proportion (agreement, field accuracy);
- ``newcombe``: Newcombe's hybrid score interval of a difference of two proportions
  (low-confidence rate, error rate: canary minus baseline);
- ``mann_whitney_u``: the two-sample rank test over per-window medians (confidence), normal
  approximation with tie and continuity corrections — robust to the non-normal, bounded
  distributions confidence has, and the test Kayenta uses for canary analysis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

# "no data": the metric has nothing to judge (no field truth at all on a plant without a line
# checker). It is shown like the others and ignored by :func:`combine` — it must not pause anything.
VerdictValue = Literal["pass", "inconclusive", "fail", "no data"]
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Verdict:
    """One metric's verdict: ``value`` with the named ``test``, the sample ``n`` and why."""

    metric: str
    value: VerdictValue
    test: str
    n: int
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "verdict": self.value,
            "test": self.test,
            "n": self.n,
            "reason": self.reason,
            "evidence": self.evidence,
        }


def _z(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (0.95 → 1.96)."""
    return _NORMAL.inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion; (0, 1) when ``n`` is 0 (nothing is known)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, {n}]")
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact at the ends (rounding would otherwise leave 1e-17 outside the interval).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def newcombe_interval(
    x_base: int, n_base: int, x_canary: int, n_canary: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval of ``p_canary - p_base`` (Newcombe's method 10, from the two Wilson intervals)."""
    p1 = x_base / n_base if n_base else 0.0
    p2 = x_canary / n_canary if n_canary else 0.0
    l1, u1 = wilson_interval(x_base, n_base, confidence)
    l2, u2 = wilson_interval(x_canary, n_canary, confidence)
    d = p2 - p1
    lo = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    hi = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return max(-1.0, lo), min(1.0, hi)


@dataclass(frozen=True)
class MannWhitney:
    """U statistics and one-sided p-values of the rank test of ``a`` against ``b``."""

    u_a: float  # pairs where a > b (ties count one half)
    u_b: float
    p_a_greater: float  # P-value of "a tends to be greater than b"
    p_a_less: float


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """The Mann-Whitney U test, normal approximation with tie and continuity corrections.

    All values tied (no information on order) gives p = 1 both ways. Raises ValueError on an
    empty sample.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one value")
    pooled = sorted([(float(v), 0) for v in a] + [(float(v), 1) for v in b])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        rank = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[k] = rank
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, pooled, strict=True) if g == 0)
    u_a = r1 - n1 * (n1 + 1) / 2.0
    u_b = n1 * n2 - u_a
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return MannWhitney(u_a, u_b, 1.0, 1.0)
    mu = n1 * n2 / 2.0
    sd = math.sqrt(var)
    z_greater = (u_a - mu - 0.5) / sd
    z_less = (u_a - mu + 0.5) / sd
    return MannWhitney(u_a, u_b, 1.0 - _NORMAL.cdf(z_greater), _NORMAL.cdf(z_less))


# -- judgements ----------------------------------------------------------------------------------


def rate_at_least(
    metric: str,
    successes: int,
    n: int,
    *,
    minimum: float,
    min_n: int,
    confidence: float = 0.95,
) -> Verdict:
    """Is a proportion (agreement, accuracy) at least ``minimum``? Wilson bounds decide."""
    lo, hi = wilson_interval(successes, n, confidence)
    ev = {
        "successes": successes,
        "n": n,
        "rate": round(successes / n, 6) if n else None,
        "lower": round(lo, 6),
        "upper": round(hi, 6),
        "minimum": minimum,
        "min_n": min_n,
        "confidence": confidence,
    }
    if n < max(1, min_n):
        return Verdict(metric, "inconclusive", "wilson", n, f"{n} < {min_n} samples", ev)
    if lo >= minimum:
        return Verdict(metric, "pass", "wilson", n, f"lower bound {lo:.3f} >= {minimum:.3f}", ev)
    if hi < minimum:
        return Verdict(metric, "fail", "wilson", n, f"upper bound {hi:.3f} < {minimum:.3f}", ev)
    return Verdict(metric, "inconclusive", "wilson", n, f"[{lo:.3f}, {hi:.3f}] straddles {minimum:.3f}", ev)


def rate_rise_at_most(
    metric: str,
    x_base: int,
    n_base: int,
    x_canary: int,
    n_canary: int,
    *,
    max_rise: float,
    min_n: int,
    confidence: float = 0.95,
) -> Verdict:
    """Did a bad-event rate (low confidence, errors) rise by at most ``max_rise`` over the baseline?"""
    lo, hi = newcombe_interval(x_base, n_base, x_canary, n_canary, confidence)
    ev = {
        "baseline": {"x": x_base, "n": n_base},
        "canary": {"x": x_canary, "n": n_canary},
        "rise_lower": round(lo, 6),
        "rise_upper": round(hi, 6),
        "max_rise": max_rise,
        "min_n": min_n,
    }
    n = min(n_base, n_canary)
    if n < max(1, min_n):
        return Verdict(metric, "inconclusive", "newcombe", n, f"{n} < {min_n} samples", ev)
    if hi <= max_rise:
        return Verdict(metric, "pass", "newcombe", n, f"rise upper bound {hi:+.3f} <= {max_rise:.3f}", ev)
    if lo > max_rise:
        return Verdict(metric, "fail", "newcombe", n, f"rise lower bound {lo:+.3f} > {max_rise:.3f}", ev)
    return Verdict(
        metric, "inconclusive", "newcombe", n, f"rise [{lo:+.3f}, {hi:+.3f}] straddles {max_rise:.3f}", ev
    )


def shift_at_most(
    metric: str,
    baseline: Sequence[float],
    canary: Sequence[float],
    *,
    max_drop: float,
    min_n: int,
    alpha: float = 0.05,
) -> Verdict:
    """Did the canary's values (per-window medians) drop by at most ``max_drop`` from the baseline's?

    Two one-sided Mann-Whitney tests of the canary against the baseline shifted down by
    ``max_drop``: significantly above it → pass; significantly below it → fail; else inconclusive.
    """
    n = min(len(baseline), len(canary))
    ev: dict[str, Any] = {
        "baseline_n": len(baseline),
        "canary_n": len(canary),
        "max_drop": max_drop,
        "min_n": min_n,
    }
    if n < max(1, min_n):
        return Verdict(metric, "inconclusive", "mann_whitney_u", n, f"{n} < {min_n} windows", ev)
    shifted = [v - max_drop for v in baseline]
    mw = mann_whitney_u(canary, shifted)
    ev.update(
        u=mw.u_a,
        p_not_worse=round(mw.p_a_greater, 6),
        p_worse=round(mw.p_a_less, 6),
        baseline_median=_median(baseline),
        canary_median=_median(canary),
    )
    if mw.p_a_greater < alpha:
        return Verdict(
            metric, "pass", "mann_whitney_u", n, f"not worse than -{max_drop:g} (p={mw.p_a_greater:.3g})", ev
        )
    if mw.p_a_less < alpha:
        return Verdict(
            metric,
            "fail",
            "mann_whitney_u",
            n,
            f"dropped by more than {max_drop:g} (p={mw.p_a_less:.3g})",
            ev,
        )
    return Verdict(
        metric, "inconclusive", "mann_whitney_u", n, f"no significant difference from -{max_drop:g}", ev
    )


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    m = len(s) // 2
    return round(s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2.0, 6)


def combine(verdicts: Sequence[Verdict]) -> VerdictValue:
    """The overall verdict: any fail → fail; else any inconclusive → inconclusive; else pass.

    Verdicts of "no data" are left out (a metric with nothing to judge neither passes nor pauses)."""
    verdicts = [v for v in verdicts if v.value != "no data"]
    values = {v.value for v in verdicts}
    if "fail" in values:
        return "fail"
    if "inconclusive" in values or not verdicts:
        return "inconclusive"
    return "pass"
