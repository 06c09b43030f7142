"""Drift on the device: is the live confidence distribution still the one the model was released with?

Pure: no clocks, no I/O. Feed each closed window's stats to
:meth:`DriftDetector.update`; it returns a :class:`DriftChange` when an
episode starts (thresholds breached for ``sustain_windows`` consecutive
windows) or ends (healthy for as many), and None otherwise — so an episode
yields exactly one ``drift`` event and one ``cleared``.

A window breaches when its median confidence is more than ``max_p50_drop``
below the baseline's, or when its low-confidence rate is above
``max_low_confidence_rate`` (never below the rate the model was released
with). Windows with fewer than ``min_frames`` scored frames (a stopped line,
a lost camera) say nothing either way.

A rate over a handful of frames is noise: at 5 packages a second a 2-second
window holds 10 frames, and one partial package is a 10 % low-confidence rate.
So each window is judged together with the windows just before it: the
shortest run of recent windows that holds ``pool_frames`` frames (its rate and
mean exactly, its percentiles as the frame-weighted mean of the windows' — close
enough for a threshold test). The pool slides window by window, so a shift is
seen as soon as most of the pool comes after it, not a whole pool later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from edge_agent.manifest import ConfidenceBaseline, DriftThresholds


@dataclass(frozen=True, slots=True)
class WindowConfidence:
    """What drift looks at in one window."""

    frames: int  # frames with a finite confidence
    confidence_mean: float
    confidence_p05: float
    confidence_p50: float
    low_confidence_rate: float


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """One window judged against the baseline."""

    breached: bool
    reasons: tuple[str, ...]
    p50_drop: float
    low_confidence_limit: float


@dataclass(frozen=True, slots=True)
class DriftChange:
    """An episode started (``state="drifting"``) or ended (``state="cleared"``), with the evidence."""

    state: Literal["drifting", "cleared"]
    reasons: tuple[str, ...]
    evidence: dict[str, Any]

    @property
    def message(self) -> str:
        if self.state == "drifting":
            return "confidence drift: " + "; ".join(self.reasons)
        return "confidence drift cleared"


def check_window(
    window: WindowConfidence, baseline: ConfidenceBaseline, thresholds: DriftThresholds
) -> DriftCheck:
    """Compare one window with the baseline (pure)."""
    reasons: list[str] = []
    p50_drop = baseline.p50 - window.confidence_p50
    if p50_drop > thresholds.max_p50_drop:
        reasons.append(
            f"median confidence {window.confidence_p50:.3f} is {p50_drop:.3f} below the baseline "
            f"{baseline.p50:.3f} (limit {thresholds.max_p50_drop:.3f})"
        )
    limit = max(thresholds.max_low_confidence_rate, baseline.low_confidence_rate)
    if window.low_confidence_rate > limit:
        reasons.append(
            f"low-confidence rate {window.low_confidence_rate:.3f} is above {limit:.3f} "
            f"(baseline {baseline.low_confidence_rate:.3f})"
        )
    return DriftCheck(bool(reasons), tuple(reasons), p50_drop, limit)


def pool_windows(windows: list[WindowConfidence]) -> WindowConfidence:
    """Several consecutive windows as one (rates and means exact, percentiles frame-weighted)."""
    if len(windows) == 1:
        return windows[0]
    n = sum(w.frames for w in windows)

    def weighted(get: Callable[[WindowConfidence], float]) -> float:
        return sum(get(w) * w.frames for w in windows) / n

    return WindowConfidence(
        frames=n,
        confidence_mean=weighted(lambda w: w.confidence_mean),
        confidence_p05=weighted(lambda w: w.confidence_p05),
        confidence_p50=weighted(lambda w: w.confidence_p50),
        low_confidence_rate=weighted(lambda w: w.low_confidence_rate),
    )


class DriftDetector:
    """Tracks consecutive breaching/healthy windows; one change per episode edge."""

    def __init__(
        self,
        baseline: ConfidenceBaseline,
        thresholds: DriftThresholds,
        *,
        min_frames: int = 10,
        pool_frames: int = 60,
    ) -> None:
        self.baseline = baseline
        self.thresholds = thresholds
        self.min_frames = min_frames
        self.pool_frames = pool_frames
        self._pool: list[WindowConfidence] = []
        self.drifting = False
        self._streak = 0  # consecutive windows that disagree with the current state
        self._recent: list[dict[str, Any]] = []

    def update(self, window: WindowConfidence) -> DriftChange | None:
        """Judge one closed window; a DriftChange when an episode starts or ends."""
        if window.frames < self.min_frames:
            return None
        self._pool.append(window)
        while len(self._pool) > 1 and sum(w.frames for w in self._pool[1:]) >= self.pool_frames:
            del self._pool[0]
        if sum(w.frames for w in self._pool) < self.pool_frames:
            return None
        window = pool_windows(self._pool)
        check = check_window(window, self.baseline, self.thresholds)
        self._recent.append(
            {
                "frames": window.frames,
                "confidence_mean": round(window.confidence_mean, 4),
                "confidence_p05": round(window.confidence_p05, 4),
                "confidence_p50": round(window.confidence_p50, 4),
                "low_confidence_rate": round(window.low_confidence_rate, 4),
                "breached": check.breached,
            }
        )
        need = self.thresholds.sustain_windows
        del self._recent[:-need]
        if check.breached != self.drifting:
            self._streak += 1
        else:
            self._streak = 0
        if self._streak < need:
            return None
        self._streak = 0
        self.drifting = check.breached
        evidence = {
            "windows": list(self._recent),
            "baseline": {
                "mean": self.baseline.mean,
                "p05": self.baseline.p05,
                "p50": self.baseline.p50,
                "low_confidence_rate": self.baseline.low_confidence_rate,
            },
            "thresholds": self.thresholds.model_dump(),
            "low_confidence_limit": check.low_confidence_limit,
            "p50_drop": round(check.p50_drop, 4),
        }
        return DriftChange("drifting" if self.drifting else "cleared", check.reasons, evidence)
