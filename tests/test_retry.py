"""The one backoff/retry rule (lineside_common.retry): schedule, bounds, no wait after the last try."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lineside_common.retry import Backoff, retry


def test_backoff_doubles_to_its_cap_without_jitter() -> None:
    b = Backoff(0.5, 4.0, jitter=False)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


@given(st.floats(0.01, 5), st.floats(0.01, 60), st.integers(0, 40), st.floats(0, 1))
def test_backoff_jitter_stays_in_half_cap_to_cap(min_s: float, max_s: float, n: int, r: float) -> None:
    b = Backoff(min_s, max_s, rng=lambda: r)
    for _ in range(n):
        b.next_delay()
    cap = min(max(max_s, min_s), min_s * 2 ** min(n, 30))
    assert cap / 2 - 1e-9 <= b.next_delay() <= cap + 1e-9


def test_retry_returns_first_success_and_waits_between_tries_only() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("cut")
        return "ok"

    told: list[int] = []
    out = retry(
        flaky,
        attempts=5,
        backoff=Backoff(1, 8, jitter=False),
        retry_on=(ConnectionError,),
        sleep=waits.append,
        on_retry=lambda attempt, exc, delay: told.append(attempt),
    )
    assert out == "ok" and len(calls) == 3 and waits == [1, 2] and told == [1, 2]


def test_retry_gives_up_after_attempts_without_a_last_wait() -> None:
    waits: list[float] = []

    def down() -> None:
        raise TimeoutError("down")

    with pytest.raises(TimeoutError):
        retry(down, attempts=3, backoff=Backoff(1, 8, jitter=False), retry_on=(OSError,), sleep=waits.append)
    assert waits == [1, 2]


def test_retry_does_not_retry_other_errors() -> None:
    waits: list[float] = []

    def wrong() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        retry(wrong, attempts=5, backoff=Backoff(1, 8), retry_on=(OSError,), sleep=waits.append)
    assert waits == []


def test_retry_stops_when_the_wait_is_cut_short() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise OSError("down")

    with pytest.raises(OSError):
        retry(down, attempts=10, backoff=Backoff(1, 8), retry_on=(OSError,), sleep=lambda s: True)
    assert len(calls) == 1
