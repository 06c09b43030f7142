"""The alert webhook's retry schedule, counted with an injected sleep (no real waiting)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from fleet_server.alerts import Webhook


def _delivered(
    handler: Callable[[httpx.Request], httpx.Response], retries: int, backoff_s: float
) -> list[float]:
    """Post one alert and close the hook; returns the waits its injected sleep was asked for."""
    waits: list[float] = []
    hook = Webhook(
        "http://hooks.test/x",
        retries=retries,
        backoff_s=backoff_s,
        transport=httpx.MockTransport(handler),
        sleep=waits.append,
    )
    hook.post({"id": 1, "message": "cam-1 drifted"})
    hook.close()  # the queue is FIFO: the alert's attempts are over once the thread has ended
    assert not hook._thread.is_alive()
    return waits


def test_webhook_backs_off_between_attempts_and_not_after_the_last() -> None:
    calls: list[str] = []

    def down(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(503)

    waits = _delivered(down, retries=3, backoff_s=0.5)
    assert calls == ["/x"] * 4  # retries + 1 attempts
    assert waits == [0.5, 1.0, 2.0]  # doubling between attempts, none after the last


def test_webhook_stops_retrying_after_a_success() -> None:
    statuses = [503, 502, 204]

    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(statuses.pop(0))

    waits = _delivered(flaky, retries=5, backoff_s=1.0)
    assert statuses == [] and waits == [1.0, 2.0]  # no more attempts after the 204
