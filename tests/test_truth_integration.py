"""Truth from the line with real processes: Mosquitto, ``fleet serve``, a real ``edge-agent run``
replaying a simulator recording, and the simulator's line checker publishing truth from the
recording's labels.

The expected field accuracy is computed here, independently of the agent's decision log and the
fleet's counting: from the decisions the checker saw on the ``decisions`` topic (model, label)
and the recording's ``labels.jsonl``. It must equal the fleet's exactly, per model version,
across an agent restart (a new boot: new decision ids) and a model swap (a rollout to 2.0.0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sim.checker import LineChecker
from sim.recording import load_recording
from tests.conftest import AgentProcess
from tests.fault_support import LineRig
from tests.mqtt import Mosquitto, wait_until

pytestmark = pytest.mark.integration

DEVICE = "line-1"


@pytest.fixture
def rig(
    tmp_path: Path, mosquitto: Mosquitto, edge_agent_process: Callable[..., AgentProcess]
) -> Iterator[LineRig]:
    line = LineRig(tmp_path, mosquitto, edge_agent_process, devices=1)
    try:
        line.start()
        wait_until(lambda: line.active().get(DEVICE) == "shapes@1.0.0", 60, what="the agent online on 1.0.0")
        yield line
    finally:
        line.stop()
        print(f"--- fleet serve ---\n{line.server.log()[-3000:]}")


def answered(rig: LineRig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = rig.api("GET", "/truth", params={"device_id": DEVICE, "limit": 10000})
    return out


def check_phase(rig: LineRig, mosquitto: Mosquitto, labels: list[Any], sent: list[Any], model: str) -> None:
    """Run a checker until it has sent 15 truths about ``model``'s decisions, stop it, and wait
    until the device has answered every truth sent so far (joined or rejected, stored)."""
    checker = LineChecker(mosquitto.host, mosquitto.port, labels, share=0.3)
    checker.start()
    try:
        wait_until(
            lambda: sum(1 for s in checker.sent if s.decision.get("model") == model) >= 15,
            60,
            what=f"15 truths about {model}",
        )
    finally:
        checker.stop()
    sent.extend(checker.sent)
    wait_until(lambda: len(answered(rig)) >= len(sent), 30, what="every truth answered by the device")


def test_field_accuracy_equals_the_recordings_truth_across_a_restart_and_a_swap(
    rig: LineRig, mosquitto: Mosquitto
) -> None:
    with load_recording(rig.camera) as rec:
        labels = list(rec.labels)
    sent: list[Any] = []

    check_phase(rig, mosquitto, labels, sent, "shapes@1.0.0")
    boot_before = {s.truth.decision_id.rsplit("-", 1)[0] for s in sent}

    # Restart: a new boot, the log on disk; truth for old decisions still joins.
    rig.agents[DEVICE].stop()
    rig.start_agent(DEVICE)
    check_phase(rig, mosquitto, labels, sent, "shapes@1.0.0")
    boots = {s.truth.decision_id.rsplit("-", 1)[0] for s in sent}
    assert len(boots) == 2 and boot_before < boots

    # A swap: 2.0.0 through a rollout; decisions name the model that made them.
    rig.release("2.0.0")
    # The checker is off during the swap: the old version has truth and the candidate none yet,
    # so the stage's field-accuracy verdict is inconclusive (docs/truth.md) and the rollout pauses
    # for a person; the override is the test's, and says why.
    rid = rig.api(
        "POST",
        "/rollouts",
        json={
            "model": "shapes@2.0.0",
            "devices": rig.device_ids,
            "stages": "100%",
            "soak": "0s",
            "min_gate_frames": 10,
            "resend_after_s": 5.0,
            "gate_timeout_s": 3.0,
        },
    )["id"]
    paused = wait_until(
        lambda: (r := rig.rollout_state(rid))["state"] in ("paused", "succeeded", "halted") and r,
        90,
        what="the rollout to 2.0.0 at its gate",
    )
    [field] = [v for v in paused["verdicts"] if v["metric"] == "field_accuracy"]
    assert (paused["state"], field["verdict"]) == ("paused", "inconclusive")
    assert field["evidence"]["canary_truth"]["n"] == 0 and field["evidence"]["baseline_truth"]["n"] > 0
    assert field["evidence"]["baseline_kind"] == "before"
    rig.api("POST", f"/rollouts/{rid}/resume", json={"by": "test", "why": "no truth for 2.0.0 yet"})
    wait_until(lambda: rig.rollout_state(rid)["state"] == "succeeded", 60, what="the rollout to 2.0.0")
    check_phase(rig, mosquitto, labels, sent, "shapes@2.0.0")

    # Decision ids are unique across the restart and the swap.
    ids = [s.truth.decision_id for s in sent]
    assert len(ids) == len(set(ids))

    # Expected, from the recording and the decisions as published (not from the fleet or the log).
    expected: dict[str, list[int]] = {}
    for s in sent:
        truth = labels[s.decision["frame_id"]].package
        e = expected.setdefault(s.decision["model"], [0, 0])
        e[0] += 1
        e[1] += 1 if s.decision["label"] == truth else 0
    assert set(expected) == {"shapes@1.0.0", "shapes@2.0.0"}

    stored = answered(rig)
    assert [r for r in stored if r["kind"] != "truth.joined"] == []
    got = {a["model"]: [a["n"], a["correct"]] for a in rig.api("GET", "/accuracy")}
    assert got == expected
    per_device = rig.api("GET", "/accuracy", params={"by_device": "true"})
    assert {(a["model"], a["device_id"]): [a["n"], a["correct"]] for a in per_device} == {
        (m, DEVICE): v for m, v in expected.items()
    }
    # The CLI shows the same numbers.
    rows = rig.server.cli_json("accuracy", "--by-device")
    assert {r["model"]: r["correct"] for r in rows} == {m: v[1] for m, v in expected.items()}


def test_truth_over_http_needs_a_truth_role_and_bad_input_stores_nothing(rig: LineRig) -> None:
    url = f"{rig.server.url}/api/v1/truth"

    def post(token: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    truth_token = rig.server.cli("tokens", "create", "--role", "truth", "--name", "qa-gate").stdout.strip()
    robot_token = rig.token_file(DEVICE).read_text().strip()
    good = {"device_id": DEVICE, "decision_id": "1.ffff-1", "label": "circle-80"}

    # A truth token says what packages were, and nothing more: no API reads, no model files.
    for path in ("/api/v1/accuracy", "/tuf/targets/anything"):
        r = httpx.get(
            f"{rig.server.url}{path}", headers={"Authorization": f"Bearer {truth_token}"}, timeout=10
        )
        assert r.status_code == 403 and r.json()["reason"] == "role", path
    # The robot's own credential cannot post truth about its decisions.
    r = post(robot_token, good)
    assert r.status_code == 403 and r.json()["reason"] == "role"
    # Unknown device, unknown label, malformed id: refused before anything is sent or stored.
    assert post(truth_token, {**good, "device_id": "nobody"}).json()["reason"] == "unknown_device"
    r = post(truth_token, {**good, "label": "hexagon-999"})
    assert r.status_code == 422 and r.json()["reason"] == "unknown_label"
    assert post(truth_token, {**good, "decision_id": "no id"}).status_code == 422
    assert answered(rig) == []

    # A decision the device never made: relayed, then rejected by the device, counted nowhere.
    r = post(truth_token, good)
    assert r.status_code == 202
    wait_until(lambda: answered(rig), 30, what="the device's answer")
    assert [(a["kind"], a["reason"]) for a in answered(rig)] == [("truth.rejected", "unknown_decision")]
    assert rig.api("GET", "/accuracy") == []

    # A real decision (read from the decisions topic) joins.
    import json

    import paho.mqtt.subscribe as sub

    msg = sub.simple(
        f"lineside/v1/devices/{DEVICE}/decisions", hostname=rig.broker.host, port=rig.broker.port
    )
    decision = json.loads(msg.payload)  # type: ignore[union-attr]
    r = post(truth_token, {**good, "decision_id": decision["id"], "label": "square-80"})
    assert r.status_code == 202
    wait_until(lambda: len(answered(rig)) == 2, 30, what="the join")
    joined = answered(rig)[0]
    assert joined["kind"] == "truth.joined" and joined["predicted"] == decision["label"]
    assert joined["correct"] == (decision["label"] == "square-80")
    acc = rig.api("GET", "/accuracy")
    # Over time: a window that ends before the join holds nothing; one from long ago holds it.
    assert rig.api("GET", "/accuracy", params={"until": "2000-01-01T00:00:00"}) == []
    assert rig.api("GET", "/accuracy", params={"since": "2000-01-01T00:00:00Z"}) == acc
    assert [(a["model"], a["n"], a["correct"]) for a in acc] == [
        ("shapes@1.0.0", 1, int(decision["label"] == "square-80"))
    ]
