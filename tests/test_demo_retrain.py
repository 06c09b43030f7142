"""The retraining demo's pure story (sim.retrain_story) and `edge-sim demo --retrain`'s CLI checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.checker import chosen
from sim.cli import main
from sim.retrain_story import (
    STEPS,
    LoopTimeline,
    Need,
    StoryOrderError,
    collection_done,
    field_accuracy_of,
    frame_label,
    heldout_labels,
    release_gate,
    train_config,
    training_labels,
)

SHARE = 0.3


def _ids(held: bool, n: int, device: str = "robot-1") -> list[str]:
    """Decision ids the line checker does (held) or does not check, in id order."""
    out, i = [], 0
    while len(out) < n:
        did = f"000001-{i:012d}"
        if chosen(did, SHARE) == held:
            out.append(did)
        i += 1
    return out


# -- the timeline -------------------------------------------------------------------------------


def test_timeline_reports_the_loop_from_the_first_alert_to_the_last_robot_served() -> None:
    tl = LoopTimeline()
    for key, t in [
        ("packages", 30.0),
        ("drift", 52.0),
        ("sampled", 140.0),
        ("trained", 400.0),
        ("served", 610.0),
    ]:
        tl.record(key, t)
    report = tl.report(goal_s=600.0)
    assert report["alert_to_served_s"] == 558.0
    assert report["within_goal"] is True
    assert [r["step"] for r in report["steps"]] == ["packages", "drift", "sampled", "trained", "served"]
    assert report["steps"][0]["since_alert_s"] is None  # before the alert
    assert report["steps"][2] == {
        "step": "sampled",
        "label": "samples in hand",
        "at_s": 140.0,
        "took_s": 88.0,
        "since_alert_s": 88.0,
    }
    assert "recovered" in report["missing"] and "labelled" in report["missing"]
    assert tl.within_goal(goal_s=500.0) is False


def test_timeline_has_no_loop_time_until_both_ends_happened() -> None:
    tl = LoopTimeline()
    tl.record("drift", 10.0)
    assert tl.alert_to_served_s is None and tl.within_goal() is None


@pytest.mark.parametrize(
    ("first", "second", "why"),
    [
        (("trained", 10.0), ("labelled", 20.0), "after 'trained'"),  # out of the story's order
        (("drift", 10.0), ("drift", 20.0), "twice"),
        (("drift", 50.0), ("sampled", 40.0), "before an earlier step"),  # back in time
        (("drift", 10.0), ("coffee", 20.0), "unknown step"),
    ],
)
def test_timeline_refuses_steps_out_of_order(
    first: tuple[str, float], second: tuple[str, float], why: str
) -> None:
    tl = LoopTimeline()
    tl.record(*first)
    with pytest.raises(StoryOrderError, match=why):
        tl.record(*second)
    assert list(tl.at_s) == [first[0]]


def test_every_step_has_its_own_key_and_the_loop_ends_are_in_it() -> None:
    keys = [s.key for s in STEPS]
    assert len(set(keys)) == len(keys)
    assert keys.index("drift") < keys.index("trained") < keys.index("served") < keys.index("recovered")


# -- labels: training from the plant's labeller, held out from the truth channel -----------------


def test_the_labeller_labels_unchecked_samples_from_the_recording_and_leaves_checked_ones_held_out() -> None:
    free, held = _ids(False, 3), _ids(True, 1)
    samples = [
        {"id": 1, "device_id": "robot-1", "sample_id": free[0], "true_label": None},
        {"id": 2, "device_id": "robot-1", "sample_id": free[1], "true_label": "circle-80"},  # done already
        {"id": 3, "device_id": "robot-1", "sample_id": held[0], "true_label": None},  # checker's: held out
        {"id": 4, "device_id": "robot-1", "sample_id": free[2], "true_label": None},  # decision never seen
        {"id": 5, "device_id": "robot-9", "sample_id": free[0], "true_label": None},  # no recording
    ]
    frames = {
        ("robot-1", free[0]): 5,
        ("robot-1", free[1]): 1,
        ("robot-1", held[0]): 2,
        ("robot-9", free[0]): 0,
    }
    labels = {"robot-1": ["a", "b", "c", "d"]}
    assert training_labels(samples, frames, labels, SHARE) == [{"id": 1, "label": "b"}]  # frame 5 loops to 1


def test_frame_label_follows_the_looped_stream() -> None:
    assert frame_label(9, ["a", "b", "c"]) == "a"
    assert frame_label(-1, ["a"]) is None
    assert frame_label(0, []) is None


def test_heldout_labels_come_from_joined_truth_only() -> None:
    samples = [
        {"id": 10, "device_id": "robot-1", "sample_id": "000001-000000000007"},
        {"id": 11, "device_id": "robot-2", "sample_id": "000001-000000000007"},
        {"id": 12, "device_id": "robot-1", "sample_id": "000001-000000000008"},
    ]
    joined = [
        {
            "kind": "truth.joined",
            "device_id": "robot-1",
            "decision_id": "000001-000000000007",
            "label": "hexagon-100",
        },
        {
            "kind": "truth.rejected",
            "device_id": "robot-1",
            "decision_id": "000001-000000000008",
            "reason": "duplicate",
        },
    ]
    assert heldout_labels(samples, joined) == {10: "hexagon-100"}


def test_collection_waits_for_every_type_in_both_sets() -> None:
    need = Need(new_train=3, old_train=1, new_heldout=2)
    trained = {"new-a": 3, "new-b": 2, "old-a": 1}
    heldout = {"new-a": 2, "new-b": 5}
    missing = collection_done(trained, heldout, ["old-a", "old-b"], ["new-a", "new-b"], need)
    assert missing == ["new-b: 2/3 train", "old-b: 0/1 train"]
    trained |= {"new-b": 3, "old-b": 1}
    assert collection_done(trained, heldout, ["old-a", "old-b"], ["new-a", "new-b"], need) == []


# -- the field gate -----------------------------------------------------------------------------


def _report(frames: int, accuracy: float, unknown: dict[str, int] | None = None) -> dict:
    return {
        "frames": frames,
        "accuracy": accuracy,
        "unknown_types": {k: {"frames": n} for k, n in (unknown or {}).items()},
    }


def test_field_accuracy_counts_unknown_types_as_wrong() -> None:
    assert field_accuracy_of(_report(20, 0.95, {"hexagon-100": 10, "circle-100": 10})) == (19, 40)


@pytest.mark.parametrize(
    ("candidate", "serving", "ok", "reason"),
    [
        (_report(40, 0.95), _report(20, 1.0, {"hexagon-100": 20}), True, "pass"),
        (_report(10, 1.0), _report(10, 1.0), False, "too_few_frames"),
        (
            _report(38, 1.0, {"hexagon-100": 2}),
            _report(20, 1.0, {"hexagon-100": 20}),
            False,
            "unknown_labels",
        ),
        (_report(40, 0.85), _report(20, 0.5, {"hexagon-100": 20}), False, "below_minimum"),
        (_report(40, 0.925), _report(40, 0.95), False, "not_better"),
    ],
)
def test_release_gate(candidate: dict, serving: dict, ok: bool, reason: str) -> None:
    verdict = release_gate(candidate, serving, min_frames=20, min_accuracy=0.9)
    assert (verdict.ok, verdict.reason) == (ok, reason)


# -- the training config ------------------------------------------------------------------------


def test_stand_in_train_config_is_a_valid_config_with_the_new_labels(tmp_path: Path) -> None:
    from models.config import load_config

    labels = ["circle-80", "circle-120", "square-80", "square-120", "triangle-100", "triangle-140"]
    path = tmp_path / "train.toml"
    path.write_text(
        train_config(
            version="1.1.0",
            labels=[*labels, "hexagon-100", "circle-100"],
            field_dataset=None,
            init_from=None,
            fast=True,
        )
    )
    config = load_config(path)
    assert (config.name, config.version) == ("shapes", "1.1.0")
    assert config.labels[:6] == labels  # the serving model's rows first: a fine-tune keeps them
    assert config.labels[6:] == ["hexagon-100", "circle-100"]
    assert config.data.train_frames_per_type == 150


def test_field_train_config_names_the_dataset_and_the_bundle_it_starts_from() -> None:
    text = train_config(
        version="1.1.0", labels=["a", "b"], field_dataset="/x/train", init_from="/r/shapes-1.0.0", fast=False
    )
    assert 'datasets = ["/x/train"]' in text and 'init_from = "/r/shapes-1.0.0"' in text


# -- the CLI ------------------------------------------------------------------------------------


def test_retrain_with_a_broker_it_cannot_use_is_one_line_and_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--retrain", "--broker", "mqtts://plant:8883", "--out", str(tmp_path / "o")])
    assert code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "mqtt://HOST:PORT" in lines[0] and "mqtts://plant:8883" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before anything started


def test_retrain_is_a_flag_not_a_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--retrain=yes"])
    assert exc.value.code != 0
    assert "--retrain" in capsys.readouterr().err


def test_the_chart_marks_every_step_of_the_story(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from sim.chart import Marker, confidence_chart

    markers = [Marker(10.0 + i, s.label, s.colour) for i, s in enumerate(STEPS)]
    series = {"robot-1": [(0.0, 0.9), (30.0, 0.5), (60.0, 0.95)]}
    out = confidence_chart(series, markers, tmp_path / "c.png", label_rows=len(markers))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
