"""The alert webhook's retry schedule, counted with an injected sleep (no real waiting)."""

from __future__ import annotations

import httpx

from fleet_server.alerts import Webhook


def test_webhook_backs_off_between_attempts_and_not_after_the_last() -> None:
    calls: list[str] = []
    waits: list[float] = []

    def down(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(503)

    hook = Webhook(
        "http://hooks.test/x",
        retries=3,
        backoff_s=0.5,
        transport=httpx.MockTransport(down),
        sleep=waits.append,
    )
    hook.post({"id": 1, "message": "cam-1 drifted"})
    hook.close()  # the queue is FIFO: the alert's attempts are over once the thread has ended
    assert not hook._thread.is_alive()
    assert calls == ["/x"] * 4  # retries + 1 attempts
    assert waits == [0.5, 1.0, 2.0]  # doubling between attempts, none after the last


def test_webhook_stops_retrying_after_a_success() -> None:
    statuses = [503, 502, 204]
    waits: list[float] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(statuses.pop(0))

    hook = Webhook(
        "http://hooks.test/x",
        retries=5,
        backoff_s=1.0,
        transport=httpx.MockTransport(flaky),
        sleep=waits.append,
    )
    hook.post({"id": 2})
    hook.close()
    assert not hook._thread.is_alive()
    assert statuses == [] and waits == [1.0, 2.0]
