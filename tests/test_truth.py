"""Truth from the line, the pure parts: decision ids across restarts, the decision log and its
join, field accuracy counting, the simulated checker's choice. Real processes: test_truth_*.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.decision_id import DecisionIds
from edge_agent.decision_log import DecisionLog, LoggedDecision, judge
from edge_agent.messages import Truth, parse_message
from fleet_server.accuracy import field_accuracy
from lineside_common.errors import MessageError
from sim.checker import chosen, truth_for


def test_decision_ids_never_repeat_across_restarts(tmp_path: Path) -> None:
    seen: set[str] = set()
    boots = []
    for _ in range(5):
        ids = DecisionIds.for_state_dir(tmp_path)
        boots.append(ids.boot)
        for _ in range(100):
            seen.add(ids.next())
    assert len(seen) == 500
    assert boots == [1, 2, 3, 4, 5]  # the persisted boot number grows by one per start
    # Every id is one a truth message may name.
    assert all(Truth(decision_id=i, label="x").decision_id == i for i in seen)


def test_judge_joins_correct_wrong_unknown_and_duplicate() -> None:
    entry = LoggedDecision("shapes@1.0.0", "circle-80", (80.0, 80.0))
    t = Truth(decision_id="1.ab-7", label="circle-80", dimensions_mm=(81.0, 78.0), truth_id="t1")
    kind, data = judge("1.ab-7", entry, t, judged=False)
    assert kind == "truth.joined" and data["correct"] is True and data["model"] == "shapes@1.0.0"
    assert data["dimension_abs_error_mm"] == pytest.approx(1.5)
    wrong = Truth(decision_id="1.ab-7", label="square-60")
    assert judge("1.ab-7", entry, wrong, judged=False)[1]["correct"] is False
    assert judge("1.ab-7", None, t, judged=False) == (
        "truth.rejected",
        {"decision_id": "1.ab-7", "truth_id": "t1", "source": "", "reason": "unknown_decision"},
    )
    assert judge("1.ab-7", entry, t, judged=True)[1]["reason"] == "duplicate"


def test_truth_messages_are_strict() -> None:
    with pytest.raises(MessageError):
        parse_message(Truth, b'{"decision_id": "1.ab-7", "label": "x", "new_field": 1}')
    with pytest.raises(MessageError):
        parse_message(Truth, b'{"decision_id": "../etc", "label": "x"}')
    with pytest.raises(MessageError):
        parse_message(Truth, b'{"decision_id": "1.ab-7", "label": ""}')


def test_decision_log_survives_a_restart_and_stays_bounded(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path, capacity=100)
    for i in range(250):
        log.record(f"1.aa-{i}", "shapes@1.0.0", "circle-80", None)
        if i % 20 == 0:
            log.flush()
    log.flush()
    assert log.join(Truth(decision_id="1.aa-249", label="circle-80"))[0] == "truth.joined"
    log.flush()
    again = DecisionLog(tmp_path, capacity=100)
    # The newest decisions are known after the restart, the oldest evicted; a judged one stays judged.
    assert again.join(Truth(decision_id="1.aa-248", label="circle-80"))[0] == "truth.joined"
    assert again.join(Truth(decision_id="1.aa-249", label="circle-80"))[1].get("reason") == "duplicate"
    assert again.join(Truth(decision_id="1.aa-3", label="circle-80"))[1]["reason"] == "unknown_decision"
    lines = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("decisions.*.jsonl"))
    assert lines <= 100 + 2


def test_a_torn_last_line_loses_only_that_decision(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path, capacity=100)
    log.record("1.aa-1", "shapes@1.0.0", "circle-80", None)
    log.record("1.aa-2", "shapes@1.0.0", "circle-80", None)
    log.flush()
    seg = next(tmp_path.glob("decisions.*.jsonl"))
    seg.write_bytes(seg.read_bytes()[:-10])
    again = DecisionLog(tmp_path, capacity=100)
    assert again.join(Truth(decision_id="1.aa-1", label="x"))[0] == "truth.joined"
    assert again.join(Truth(decision_id="1.aa-2", label="x"))[0] == "truth.rejected"


def test_field_accuracy_counts_per_model_and_device() -> None:
    ev = [
        ("r1", {"model": "m@1", "correct": True, "dimension_abs_error_mm": 1.0}),
        ("r1", {"model": "m@1", "correct": False, "dimension_abs_error_mm": 3.0}),
        ("r2", {"model": "m@1", "correct": True}),
        ("r2", {"model": "m@2", "correct": True}),
        ("r2", {"model": "m@2", "correct": "yes"}),  # malformed: not counted
    ]
    overall = {a.model: a for a in field_accuracy(ev)}
    assert (overall["m@1"].n, overall["m@1"].correct, overall["m@1"].dimension_mae_mm) == (3, 2, 2.0)
    assert (overall["m@2"].n, overall["m@2"].accuracy) == (1, 1.0)
    per = {(a.model, a.device_id): a for a in field_accuracy(ev, by_device=True)}
    assert per[("m@1", "r1")].n == 2 and per[("m@1", "r2")].n == 1


def test_checker_choice_is_stable_and_near_the_share() -> None:
    ids = [f"3.beef-{i}" for i in range(5000)]
    picked = [i for i in ids if chosen(i, 0.25)]
    assert picked == [i for i in ids if chosen(i, 0.25)]
    assert 0.2 < len(picked) / len(ids) < 0.3
    assert not any(chosen(i, 0.0) for i in ids) and all(chosen(i, 1.0) for i in ids)


def test_checker_truth_comes_from_the_recording_label() -> None:
    from sim.render import FrameLabel

    lab = FrameLabel(0, "circle-80", "circle", 80.5, 79.5, 0.0, (0, 0, 1, 1), (0.0, 0.0), False)
    t = truth_for({"id": "1.aa-1", "frame_id": 0, "label": "square-60"}, [lab], 1.0)
    assert t is not None and t.label == "circle-80" and t.dimensions_mm == (80.5, 79.5)
    assert truth_for({"id": "1.aa-1", "frame_id": 5}, [lab], 1.0) is None  # not this recording's frame


def test_simulated_devices_send_truth_events_for_their_share() -> None:
    from edge_agent.messages import Event
    from sim.fleet import SimDevice, SimOptions

    sent: list[Event] = []

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        if topic.endswith("/events"):
            sent.append(parse_message(Event, payload))

    dev = SimDevice("sim-1", SimOptions(truth_share=1.0, truth_accuracy=1.0), publish)
    dev.truth(20, 0.0)
    assert len(sent) == 20 and all(e.kind == "truth.joined" and e.data["correct"] for e in sent)
    assert len({e.data["decision_id"] for e in sent}) == 20
    rows = [(e.device_id, e.data) for e in sent]
    assert [(a.model, a.n, a.correct) for a in field_accuracy(rows)] == [("shapes@1.0.0", 20, 20)]
    sent.clear()
    SimDevice("sim-2", SimOptions(truth_share=0.0), publish).truth(20, 0.0)
    assert sent == []


@pytest.mark.parametrize("args", [["--share", "1.5"], ["--broker", "http://x"]])
def test_edge_sim_checker_refuses_bad_options_in_one_line(tmp_path: Path, args: list[str]) -> None:
    import subprocess
    import sys

    cp = subprocess.run(
        [sys.executable, "-m", "sim.cli", "checker", str(tmp_path / "rec"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cp.returncode != 0 and "Traceback" not in cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1


def test_accuracy_over_time_through_the_real_ingest(db_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from edge_agent.messages import Event, Topics, dump
    from fleet_server import accuracy
    from fleet_server.db import Database
    from fleet_server.ingest import Inbound, Ingest

    topics = Topics()
    t0 = datetime(2026, 11, 30, 12, tzinfo=UTC)

    def joined(seq: int, minutes: int, model: str, correct: bool) -> Inbound:
        ev = Event(
            device_id="r1",
            seq=seq,
            kind="truth.joined",
            at=t0 + timedelta(minutes=minutes),
            data={"decision_id": f"000001-{seq:012d}", "model": model, "correct": correct},
        )
        return Inbound(topics.device("r1", "events"), dump(ev), 0, 1)

    db = Database(db_url)
    db.create()
    try:
        batch = [joined(1, 0, "m@1", True), joined(2, 5, "m@1", False), joined(3, 10, "m@2", True)]
        Ingest(db, topics).write_batch([*batch, batch[0]])  # a redelivery counts once
        every = {(a.model, a.n, a.correct) for a in accuracy.query(db)}
        assert every == {("m@1", 2, 1), ("m@2", 1, 1)}
        first = accuracy.query(db, until=t0 + timedelta(minutes=1))
        assert [(a.model, a.n, a.correct) for a in first] == [("m@1", 1, 1)]
        later = accuracy.query(db, since=t0 + timedelta(minutes=5), model="m@1")
        assert [(a.model, a.n, a.correct) for a in later] == [("m@1", 1, 0)]
    finally:
        db.dispose()
