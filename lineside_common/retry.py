"""The one backoff and retry rule: capped exponential delays with jitter, and a bounded retry loop.

Every retrying part of Lineside — the agent's broker connection and camera reconnect, its model
downloads and sample uploads, the server's webhook and ingest writes — takes its delays from
``Backoff`` and, where it retries one call, loops with ``retry``. Both are pure apart from the
injected ``sleep`` (a ``threading.Event().wait`` where a stop must cut the wait short), so the
schedule is tested without waiting.

The delay before attempt ``n + 1`` (``n`` failures so far) is drawn from ``[cap/2, cap]`` with
``cap = min(max_s, min_s * 2**(n - 1))``; ``jitter=False`` gives ``cap`` itself. ``retry`` never
sleeps after its last attempt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Backoff:
    """Capped exponential backoff with jitter (the random source is injected)."""

    def __init__(
        self,
        min_s: float,
        max_s: float,
        rng: Callable[[], float] = random.random,
        *,
        jitter: bool = True,
    ) -> None:
        self.min_s = min_s
        self.max_s = max(max_s, min_s)
        self._rng = rng
        self.jitter = jitter
        self.attempt = 0

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        cap = min(self.max_s, self.min_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return cap / 2 + self._rng() * cap / 2 if self.jitter else cap

    def reset(self) -> None:
        """A success: the next failure starts again from ``min_s``."""
        self.attempt = 0


def retry(
    call: Callable[[], T],
    *,
    attempts: int,
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...],
    sleep: Callable[[float], object],
    on_retry: Callable[[int, BaseException, float], None] = lambda attempt, exc, delay: None,
) -> T:
    """Call ``call`` up to ``attempts`` times (at least once), waiting ``backoff`` between tries.

    Only exceptions in ``retry_on`` are retried; any other propagates at once. After the last
    attempt its exception propagates, without a final wait. ``on_retry(attempt, exc, delay)`` is
    told of each failure that will be retried (``attempt`` counts from 1). If ``sleep`` returns
    True (a stop event was set during the wait) the last exception propagates at once.
    """
    total = max(1, attempts)
    for attempt in range(1, total + 1):
        try:
            return call()
        except retry_on as exc:
            if attempt >= total:
                raise
            delay = backoff.next_delay()
            on_retry(attempt, exc, delay)
            if sleep(delay) is True:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises
