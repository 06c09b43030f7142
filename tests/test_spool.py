"""The on-disk spool: durable, ordered, bounded (telemetry dropped first), seq continues across restarts."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.spool import Spool


def _msg(channel: str) -> object:
    return lambda seq: json.dumps({"ch": channel, "seq": seq}).encode()


def test_append_assigns_per_channel_seq_and_keeps_order(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    seqs = [s.append(ch, _msg(ch))[0] for ch in ["telemetry", "events", "telemetry", "events", "events"]]
    assert seqs == [0, 0, 1, 1, 2]
    got = [(e.channel, e.seq, json.loads(e.read() or b"{}")["seq"]) for e in s.pending()]
    assert got == [
        ("telemetry", 0, 0),
        ("events", 0, 0),
        ("telemetry", 1, 1),
        ("events", 1, 1),
        ("events", 2, 2),
    ]
    assert len(s) == 5


def test_survives_restart_and_seq_continues(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    for _ in range(3):
        s.append("telemetry", _msg("telemetry"))
    s.append("events", _msg("events"))
    first = s.pending()[0]
    s.remove(first.order)
    s2 = Spool(tmp_path)
    assert [(e.channel, e.seq) for e in s2.pending()] == [("telemetry", 1), ("telemetry", 2), ("events", 0)]
    assert s2.append("telemetry", _msg("telemetry"))[0] == 3
    assert s2.append("events", _msg("events"))[0] == 1
    # Delivered everything: the counters still continue.
    for e in s2.pending():
        s2.remove(e.order)
    s3 = Spool(tmp_path)
    assert len(s3) == 0
    assert s3.next_seq("telemetry") == 4 and s3.next_seq("events") == 2


def test_crash_between_spooling_and_counter_does_not_repeat_seq(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.append("events", _msg("events"))
    s.append("events", _msg("events"))
    (tmp_path / "seq.events").write_text("1")  # as if the counter write was lost
    assert Spool(tmp_path).next_seq("events") == 2


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".0000000000000000.events.0.json.1.2.tmp").write_bytes(b"{")
    s = Spool(tmp_path)
    assert len(s) == 0 and not list(tmp_path.glob("*.tmp"))


def test_full_spool_drops_oldest_telemetry_first_and_keeps_events(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_messages=10)
    s.append("events", _msg("events"))
    for _ in range(12):
        s.append("telemetry", _msg("telemetry"))
    assert len(s) == 10
    assert s.take_dropped() == 3 and s.take_dropped() == 0
    kept = s.pending()
    assert kept[0].channel == "events"
    assert [e.seq for e in kept if e.channel == "telemetry"] == list(range(3, 12))
    for _ in range(15):
        s.append("events", _msg("events"))
    assert [e.channel for e in s.pending()].count("events") == 16  # events are never dropped
    assert all(e.channel == "events" for e in s.pending())


def test_wait_empty(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    assert s.wait_empty(0.0)
    s.append("events", _msg("events"))
    assert not s.wait_empty(0.01)
    s.remove(s.pending()[0].order)
    assert s.wait_empty(0.0)
