"""The MQTT link's batch-write retry: 0.2 s doubling to 5 s between tries, cut short by a stop.

No broker and no database: the link is never connected, its Ingest is a fake that fails a given
number of times, and its stop event is a fake whose wait records the delay (nothing sleeps).
"""

from __future__ import annotations

from typing import Any

from edge_agent.messages import Topics
from fleet_server.ingest import Inbound, IngestCounts, MqttLink

TOPICS = Topics()
BATCH = [Inbound(TOPICS.device("a", "telemetry"), b"{}", 1, 7)]


class _FailingIngest:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def write_batch(self, items: list[Inbound]) -> IngestCounts:
        self.calls += 1
        assert items == BATCH  # the same batch every time: it stays unacked until stored
        if self.calls <= self.failures:
            raise OSError("database is down")
        return IngestCounts(telemetry_new=1)


class _StopEvent:
    """``wait`` records the delay and says whether a stop came during it."""

    def __init__(self, stop_on_wait: int | None = None) -> None:
        self.waits: list[float] = []
        self.stop_on_wait = stop_on_wait

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return len(self.waits) == self.stop_on_wait


def _link(ingest: _FailingIngest, stop: _StopEvent) -> Any:
    link = MqttLink("mqtt://127.0.0.1:1", TOPICS, ingest)  # type: ignore[arg-type]
    link._stop = stop  # type: ignore[assignment]
    return link


def test_a_batch_is_retried_with_capped_doubling_until_it_is_stored() -> None:
    ingest, stop = _FailingIngest(failures=8), _StopEvent()
    counts = _link(ingest, stop)._write_until_stored(BATCH)
    assert counts == IngestCounts(telemetry_new=1) and ingest.calls == 9
    assert stop.waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]  # none after the success


def test_a_stop_during_a_wait_gives_up_without_another_try() -> None:
    ingest, stop = _FailingIngest(failures=100), _StopEvent(stop_on_wait=3)
    assert _link(ingest, stop)._write_until_stored(BATCH) is None
    assert ingest.calls == 3 and stop.waits == [0.2, 0.4, 0.8]
