"""Which frames become samples: the sampling policy and its quotas. Pure: no files, threads or clocks.

Strategies, in the order a frame is judged (the first that wants it names the reason):

``capture``     an operator's ``capture`` command asked for the next N frames (or N low-confidence ones)
``shadow_disagreement``  the shadow model disagrees with the serving one (the shadow thread offers it)
``low_confidence``  top-1 confidence inside the configured band ``[low, high)``
``drift``       a share of the frames while the drift detector says the window drifts
``random``      a uniform random share of all frames

Whatever the strategy, a frame is taken only when every quota has a token: the global buckets and
the frame's label's buckets (per minute / hour / day each). A refused frame takes no token.
Randomness and time come in as arguments (``u`` in [0, 1), ``now`` in seconds), so a test
enumerates decisions exactly; the shell holds a seeded ``random.Random`` and the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Reason = Literal["capture", "shadow_disagreement", "low_confidence", "drift", "random"]
REASONS: tuple[Reason, ...] = ("capture", "shadow_disagreement", "low_confidence", "drift", "random")
PERIODS_S: dict[str, float] = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``capacity / period_s`` per second.

    ``now`` is any clock that does not go backwards between calls; a clock that does is treated
    as standing still (no refill), never as a refund.
    """

    capacity: float
    period_s: float
    tokens: float = -1.0
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.capacity < 0 or self.period_s <= 0:
            raise ValueError("a bucket needs capacity >= 0 and period_s > 0")
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(
                self.capacity, self.tokens + (now - self.updated) * self.capacity / self.period_s
            )
        if self.updated is None or now > self.updated:
            self.updated = now

    def available(self, now: float, amount: float = 1.0) -> bool:
        self._refill(now)
        return self.tokens >= amount

    def take(self, now: float, amount: float = 1.0) -> None:
        """Take ``amount`` (the caller checked :meth:`available`; a byte bucket may go into debt)."""
        self._refill(now)
        self.tokens -= amount

    def wait_s(self, now: float, amount: float) -> float:
        """Seconds until ``min(amount, capacity)`` tokens are there (0: now)."""
        self._refill(now)
        need = min(amount, self.capacity) - self.tokens
        if need <= 1e-9 * max(1.0, self.capacity):  # rounding, not a real shortfall
            return 0.0
        return need * self.period_s / self.capacity if self.capacity > 0 else float("inf")


@dataclass(frozen=True)
class Limits:
    """Counts per period; None: no limit for that period."""

    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None

    def buckets(self) -> dict[str, TokenBucket]:
        out = {}
        for period, n in (("minute", self.per_minute), ("hour", self.per_hour), ("day", self.per_day)):
            if n is not None:
                out[period] = TokenBucket(float(n), PERIODS_S[period])
        return out


@dataclass
class Quotas:
    """Global and per-label token buckets; ``try_take`` takes one token from each, or none."""

    total: Limits
    per_label: Limits
    _global: dict[str, TokenBucket] = field(init=False)
    _labels: dict[str, dict[str, TokenBucket]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._global = self.total.buckets()

    def _label(self, label: str) -> dict[str, TokenBucket]:
        b = self._labels.get(label)
        if b is None:
            b = self._labels[label] = self.per_label.buckets()
        return b

    def try_take(self, label: str, now: float) -> bool:
        buckets = [*self._global.values(), *self._label(label).values()]
        if not all(b.available(now) for b in buckets):
            return False
        for b in buckets:
            b.take(now)
        return True

    def state(self) -> dict[str, Any]:
        """The buckets' levels, to persist (quotas must hold across agent restarts)."""

        def dump(bs: dict[str, TokenBucket]) -> dict[str, list[float | None]]:
            return {k: [b.tokens, b.updated] for k, b in bs.items()}

        return {"global": dump(self._global), "labels": {k: dump(v) for k, v in self._labels.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        """Apply levels from :meth:`state` (unknown periods and malformed entries are ignored)."""

        def load(bs: dict[str, TokenBucket], raw: Any) -> None:
            if not isinstance(raw, dict):
                return
            for k, b in bs.items():
                v = raw.get(k)
                if isinstance(v, list) and len(v) == 2 and isinstance(v[0], int | float):
                    b.tokens = min(b.capacity, float(v[0]))
                    b.updated = float(v[1]) if isinstance(v[1], int | float) else None

        load(self._global, state.get("global"))
        labels = state.get("labels")
        if isinstance(labels, dict):
            for label, raw in labels.items():
                if isinstance(label, str):
                    load(self._label(label), raw)


@dataclass(frozen=True)
class SamplingRules:
    """What the strategies want (quotas apart). A band ``(low, high)`` of None turns it off."""

    low_confidence_band: tuple[float, float] | None = None
    random_share: float = 0.0
    drift_share: float = 0.0
    shadow_disagreement: bool = True


@dataclass
class SamplingPolicy:
    """The sampling decision for one frame at a time; holds the quotas and pending capture requests."""

    rules: SamplingRules
    quotas: Quotas
    pending_any: int = 0
    pending_low_confidence: int = 0
    refused_by_quota: int = 0

    def request(self, count: int, *, low_confidence: bool) -> None:
        """An operator's ``capture``: the next ``count`` frames (or low-confidence frames)."""
        if low_confidence:
            self.pending_low_confidence += count
        else:
            self.pending_any += count

    def in_band(self, confidence: float) -> bool:
        band = self.rules.low_confidence_band
        return band is not None and band[0] <= confidence < band[1]

    def wants(
        self, *, confidence: float, drifting: bool, u: float, shadow_disagrees: bool | None
    ) -> Reason | None:
        """The first strategy that wants this frame, quotas not consulted (pure, no state change)."""
        low = self.in_band(confidence)
        if self.pending_any > 0 or (self.pending_low_confidence > 0 and low):
            return "capture"
        if self.rules.shadow_disagreement and shadow_disagrees:
            return "shadow_disagreement"
        if low:
            return "low_confidence"
        if drifting and u < self.rules.drift_share:
            return "drift"
        if u < self.rules.random_share:
            return "random"
        return None

    def decide(
        self,
        *,
        now: float,
        label: str,
        confidence: float,
        drifting: bool = False,
        u: float = 1.0,
        shadow_disagrees: bool | None = None,
    ) -> Reason | None:
        """Take this frame? The reason, with its quota tokens (and capture request) consumed; else None."""
        reason = self.wants(confidence=confidence, drifting=drifting, u=u, shadow_disagrees=shadow_disagrees)
        if reason is None:
            return None
        if not self.quotas.try_take(label, now):
            self.refused_by_quota += 1
            return None
        if reason == "capture":
            if self.pending_any > 0:
                self.pending_any -= 1
            else:
                self.pending_low_confidence -= 1
        return reason
