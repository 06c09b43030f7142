"""The retraining demo's pure story (sim.retrain_story) and `edge-sim demo --retrain`'s CLI checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.checker import chosen
from sim.cli import main
from sim.demo import RELEASES
from sim.retrain_story import (
    STEPS,
    LoopTimeline,
    Need,
    PipelinePlan,
    PipelineReportError,
    StoryOrderError,
    base_config,
    collection_done,
    frame_label,
    heldout_labels,
    pipeline_config,
    pipeline_marks,
    read_pipeline_report,
    training_labels,
)
from tests.pg_support import require_module

SHARE = 0.3
BASELINE = ["circle-80", "circle-120", "square-80", "square-120", "triangle-100", "triangle-140"]


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
    need = Need(new_train=3, old_train=1, new_heldout=2, shared_heldout=4)
    trained = {"new-a": 3, "new-b": 2, "old-a": 1}
    heldout = {"new-a": 2, "new-b": 5, "old-a": 3}
    missing = collection_done(trained, heldout, ["old-a", "old-b"], ["new-a", "new-b"], need)
    assert missing == ["new-b: 2/3 train", "old-b: 0/1 train", "known types: 3/4 held out"]
    trained |= {"new-b": 3, "old-b": 1}
    heldout |= {"old-b": 1}
    assert collection_done(trained, heldout, ["old-a", "old-b"], ["new-a", "new-b"], need) == []


# -- the pipeline ------------------------------------------------------------------------------


def _plan(tmp_path: Path) -> PipelinePlan:
    base = tmp_path / "train.toml"
    base.write_text(base_config(fast=True))
    return PipelinePlan(
        version="1.1.0",
        base_config=str(base),
        serving=str(RELEASES / "shapes-1.0.0"),
        train_dir=str(tmp_path / "field" / "train"),
        heldout_dir=str(tmp_path / "field" / "heldout"),
        server="http://127.0.0.1:8080",
        keys=str(tmp_path / "keys"),
        devices=["robot-1", "robot-2", "robot-3"],
        soak_s=5.0,
    )


def test_pipeline_config_is_one_the_pipeline_accepts(tmp_path: Path) -> None:
    from models.pipeline_config import load_pipeline_config

    plan = _plan(tmp_path)
    path = tmp_path / "PIPELINE.toml"
    path.write_text(pipeline_config(plan))
    config = load_pipeline_config(path)
    assert config.pipeline.version == "1.1.0"
    assert config.pipeline.serving == plan.serving and config.train["init_from"] == plan.serving
    assert config.data.datasets == [plan.train_dir] and config.data.heldout == plan.heldout_dir
    assert config.rollout.start and config.rollout.devices == ["robot-1", "robot-2", "robot-3"]
    assert config.rollout.shadow == "all" and config.rollout.stages == "1,100%"
    assert config.release is not None and config.release.token_env == "LINESIDE_TOKEN"


def test_base_config_gives_the_pipeline_a_valid_training_config(tmp_path: Path) -> None:
    from models.pipeline_config import load_pipeline_config
    from models.pipeline_steps import train_config

    path = tmp_path / "PIPELINE.toml"
    path.write_text(pipeline_config(_plan(tmp_path)))
    labels = [*BASELINE, "circle-100", "hexagon-100"]
    tc = train_config(load_pipeline_config(path), labels)
    assert (tc.name, tc.version, tc.labels) == ("shapes", "1.1.0", labels)
    assert tc.train.init_from == str(RELEASES / "shapes-1.0.0")
    assert tc.data.render_share == PipelinePlan.render_share  # the plan's default reaches training


def _report(**over: object) -> str:
    doc: dict[str, object] = {
        "ok": True,
        "reason": "ok",
        "steps": [
            {"name": "dataset", "status": "ok", "seconds": 2.0, "reason": ""},
            {"name": "train", "status": "ok", "seconds": 100.0, "reason": ""},
            {"name": "evaluate", "status": "ok", "seconds": 10.0, "reason": ""},
            {"name": "gate", "status": "ok", "seconds": 0.5, "reason": ""},
            {"name": "bundle", "status": "ok", "seconds": 1.5, "reason": ""},
            {"name": "release", "status": "ok", "seconds": 3.0, "reason": ""},
            {"name": "rollout", "status": "ok", "seconds": 1.0, "reason": ""},
        ],
        "release": {"name": "shapes", "version": "1.1.0", "digest": "ab"},
        "rollout_id": "r-1",
        "field_gate": {"verdict": "pass"},
    }
    doc.update(over)
    return json.dumps(doc)


def test_pipeline_steps_land_on_the_timeline_in_order() -> None:
    report = read_pipeline_report(_report())
    assert pipeline_marks(report, 100.0) == {"trained": 202.0, "gated": 212.5, "released": 217.0}
    assert report.rollout_id == "r-1"


def test_a_stopped_pipeline_marks_only_what_it_finished() -> None:
    steps = json.loads(_report())["steps"]
    steps[3] |= {"status": "failed", "reason": "field_gate"}
    for s in steps[4:]:
        s["status"] = "not_run"
    report = read_pipeline_report(
        _report(ok=False, reason="field_gate", steps=steps, release=None, rollout_id=None)
    )
    assert not report.ok and report.reason == "field_gate"
    assert report.failed_step() == steps[3]
    assert pipeline_marks(report, 0.0) == {"trained": 102.0}


@pytest.mark.parametrize(
    "text",
    [
        "pipeline ok: released shapes@1.1.0",  # the human line, not --json
        json.dumps({"ok": True}),
        json.dumps({"ok": "yes", "steps": []}),
        _report(release=None),  # ok without a release
        _report(steps=[{"status": "ok"}]),
    ],
)
def test_a_report_the_demo_cannot_read_is_refused(text: str) -> None:
    with pytest.raises(PipelineReportError):
        read_pipeline_report(text)


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
    require_module("matplotlib", "the demo extra draws the chart")
    from sim.chart import Marker, confidence_chart

    markers = [Marker(10.0 + i, s.label, s.colour) for i, s in enumerate(STEPS)]
    series = {"robot-1": [(0.0, 0.9), (30.0, 0.5), (60.0, 0.95)]}
    out = confidence_chart(series, markers, tmp_path / "c.png", label_rows=len(markers))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
