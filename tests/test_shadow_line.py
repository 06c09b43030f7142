"""Correct, not just confident — with real agents, a real Mosquitto and ``fleet serve``.

(a) a side-loaded release whose labels are rotated (valid signatures, as confident as the good
    one) rolls itself back in probation, the confusion counts in the rollback event;
(b) a rollout of it halts at its shadow stage and no device ever serves it;
(c) a good release that adds two new package types passes its shadow stage;
(d) no baseline → inconclusive → paused with an alert, and resumable with the override recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edge_agent.updates import store_dir
from tests.conftest import AgentProcess
from tests.mqtt import Mosquitto, wait_until
from tests.shadow_support import ShadowLine

pytestmark = pytest.mark.integration


@pytest.fixture
def line(
    tmp_path: Path, mosquitto: Mosquitto, edge_agent_process: Callable[..., AgentProcess]
) -> Iterator[ShadowLine]:
    rig = ShadowLine(tmp_path, mosquitto, edge_agent_process, devices=1)
    rig.start()
    try:
        wait_until(
            lambda: (
                all(d.get("online") and d["active_model"] == "shapes@1.0.0" for d in rig.devices().values())
                and len(rig.devices()) == len(rig.device_ids)
            ),
            60,
            what="agents online on 1.0.0",
        )
        rig.wait_for_baseline()
        yield rig
    finally:
        rig.stop()
        print(f"--- fleet serve ---\n{rig.server.log()[-4000:]}")


def test_side_loaded_rotated_labels_roll_back_in_probation_with_the_confusion_counts(
    line: ShadowLine,
) -> None:
    dev = line.device_ids[0]
    line.release_variant("1.1.0", "rotated")
    out = line.edge_agent_cli(dev, "install", str(line.server.data_dir / "repo"), "--model", "shapes@1.1.0")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: line.events(dev, "rollback"), 60, what="the agent's rollback event at the server")
    rb = line.events(dev, "rollback")[0]
    assert rb["data"]["reason"] == "probation_failed"
    ev = rb["data"]["evidence"]
    assert "agreement" in ev["failed_gates"]
    agreement = ev["agreement"]
    [verdict] = [v for v in agreement["verdicts"] if v["metric"] == "agreement"]
    assert verdict["verdict"] == "fail" and verdict["test"] == "wilson" and verdict["n"] >= 20
    # The synthetic model calls every frame its first label: the old manifest names it circle-80,
    # the rotated one square-80 — the confusion counts say exactly that.
    confusion = agreement["confusion"]
    assert set(confusion) == {"circle-80"} and set(confusion["circle-80"]) == {"square-80"}
    assert confusion["circle-80"]["square-80"] == agreement["compared"] >= 20 and agreement["agree"] == 0
    state = ModelStore(store_dir(line.state_dir(dev))).read_state()
    assert state.active is not None and state.active.version == "1.0.0" and "shapes@1.1.0" in state.failed
    # The shadow blocks of the probation windows reached the server with the telemetry.
    blocks = line.shadow_blocks(dev)
    assert blocks and all(b["role"] == "baseline" for b in blocks)
    assert sum(b["compared"] for b in blocks) > 0 and sum(b["agree"] for b in blocks) == 0


def test_install_shadow_side_loads_a_candidate_that_runs_beside_and_never_serves(line: ShadowLine) -> None:
    dev = line.device_ids[0]
    line.release_variant("1.2.0", "new_types")
    repo = str(line.server.data_dir / "repo")
    out = line.edge_agent_cli(dev, "install", repo, "--model", "shapes@1.2.0", "--shadow", "--json")
    assert out.returncode == 0, out.stderr
    wait_until(
        lambda: line.events(dev, "shadow.started"), 60, what="the daemon started the side-loaded shadow"
    )
    started = line.events(dev, "shadow.started")[0]
    assert started["data"]["source"] == "cli" and started["model"]["version"] == "1.2.0"

    def compared() -> int:
        blocks = [
            b
            for b in line.shadow_blocks(dev)
            if b["role"] == "candidate" and b["candidate"]["version"] == "1.2.0"
        ]
        assert all(b["agree"] == b["compared"] for b in blocks), blocks  # same answers on the known labels
        return sum(b["compared"] for b in blocks)

    wait_until(lambda: compared() >= 20, 60, what="20 frames compared in shadow")
    state = ModelStore(store_dir(line.state_dir(dev))).read_state()
    assert state.active is not None and state.active.version == "1.0.0" and state.previous is None
    assert line.events(dev, "update.installed") == []
    stop = line.edge_agent_cli(dev, "install", "--shadow-stop")
    assert stop.returncode == 0, stop.stderr
    wait_until(lambda: line.events(dev, "shadow.stopped"), 60, what="the daemon stopped the shadow")


def _rollout(line: ShadowLine, version: str, **over: object) -> str:
    body: dict[str, object] = {
        "model": f"shapes@{version}",
        "devices": line.device_ids,
        "stages": "100%",
        "soak": "1s",
        "min_gate_frames": 10,
        "resend_after_s": 5.0,
        **over,
    }
    rid: str = line.api("POST", "/rollouts", json=body)["id"]
    return rid


def _ended(line: ShadowLine, rid: str, *states: str) -> bool:
    return str(line.rollout_state(rid)["state"]) in states


@pytest.fixture
def pair(
    tmp_path: Path, mosquitto: Mosquitto, edge_agent_process: Callable[..., AgentProcess]
) -> Iterator[ShadowLine]:
    rig = ShadowLine(tmp_path, mosquitto, edge_agent_process, devices=2)
    rig.start()
    try:
        wait_until(
            lambda: (
                len(rig.devices()) == 2
                and all(
                    d.get("online") and d["active_model"] == "shapes@1.0.0" for d in rig.devices().values()
                )
            ),
            60,
            what="agents online on 1.0.0",
        )
        rig.wait_for_baseline()
        yield rig
    finally:
        rig.stop()
        print(f"--- fleet serve ---\n{rig.server.log()[-4000:]}")


def test_a_rollout_of_rotated_labels_halts_at_its_shadow_stage_and_no_device_serves_it(
    pair: ShadowLine,
) -> None:
    pair.release_variant("1.1.0", "rotated")
    rid = _rollout(pair, "1.1.0", shadow="all", shadow_soak="1s", shadow_min_frames=20)
    wait_until(lambda: _ended(pair, rid, "halted", "succeeded", "paused"), 90, what="the shadow verdict")
    r = pair.rollout_state(rid)
    assert r["state"] == "halted", r["history"]
    [v] = [v for v in r["verdicts"] if v["gate"] == "shadow"]
    assert (v["metric"], v["verdict"], v["test"]) == ("agreement", "fail", "wilson") and v["n"] >= 20
    assert r["shadow"]["evidence"]["confusion"]["circle-80"].keys() == {"square-80"}
    for d in pair.device_ids:
        # Verified and run in shadow, answered, stopped — and never installed or served.
        assert pair.events(d, "shadow.started") and pair.events(d, "update.installed") == []
        wait_until(lambda d=d: pair.events(d, "shadow.stopped"), 30, what=f"{d} stopped its shadow")
        state = ModelStore(store_dir(pair.state_dir(d))).read_state()
        assert state.active is not None and state.active.version == "1.0.0" and state.previous is None
        assert dict(state.highest).get("shapes") == "1.0.0"
        assert pair.status(d)["model"]["version"] == "1.0.0"
    alerts = pair.api("GET", "/alerts")
    assert any(a["kind"] == "rollout.halted" and a["rollout_id"] == rid for a in alerts)


def test_a_good_release_adding_two_package_types_passes_its_shadow_stage(pair: ShadowLine) -> None:
    pair.release_variant("1.2.0", "new_types")
    rid = _rollout(pair, "1.2.0", shadow="all", shadow_soak="1s", shadow_min_frames=20)
    wait_until(
        lambda: _ended(pair, rid, "halted", "succeeded", "paused", "aborted"), 120, what="the rollout's end"
    )
    r = pair.rollout_state(rid)
    assert r["state"] == "succeeded", (r["reason"], r["history"])
    [v] = [v for v in r["verdicts"] if v["gate"] == "shadow"]
    assert v["verdict"] == "pass" and v["evidence"]["lower"] >= 0.9
    assert r["shadow"]["state"] == "passed"
    for d in pair.device_ids:
        state = ModelStore(store_dir(pair.state_dir(d))).read_state()
        assert state.active is not None and state.active.version == "1.2.0" and not state.probation
        [passed] = pair.events(d, "probation.passed")[-1:]
        # Probation's reverse shadow agreed with 1.0.0 on every label both know.
        verdicts = passed["data"]["evidence"]["agreement"]["verdicts"]
        assert [x["verdict"] for x in verdicts] == ["pass"]


def test_no_baseline_is_inconclusive_pauses_with_an_alert_and_resumes_as_an_override(
    pair: ShadowLine,
) -> None:
    pair.release("2.0.0")
    # A baseline window of a millisecond before the rollout holds no telemetry: no baseline.
    rid = _rollout(pair, "2.0.0", baseline_window_s=0.001)
    wait_until(lambda: _ended(pair, rid, "paused", "halted", "succeeded"), 90, what="the quality gate")
    r = pair.rollout_state(rid)
    assert r["state"] == "paused" and r["awaiting_override"] == "baseline", r["history"]
    assert [(v["metric"], v["verdict"]) for v in r["verdicts"]] == [("baseline", "inconclusive")]
    alerts = [a for a in pair.api("GET", "/alerts") if a["rollout_id"] == rid]
    assert [a["kind"] for a in alerts] == ["rollout.inconclusive"]
    no_reason = pair.server.cli("rollout", "resume", rid, check=False)
    assert no_reason.returncode != 0 and pair.rollout_state(rid)["state"] == "paused"
    ok = pair.server.cli("rollout", "resume", rid, "--by", "carol", "--why", "first rollout on this line")
    assert ok.returncode == 0
    wait_until(lambda: _ended(pair, rid, "succeeded", "halted", "paused"), 60, what="the rollout's end")
    r = pair.rollout_state(rid)
    assert r["state"] == "succeeded", r["history"]
    assert [(o["gate"], o["by"], o["why"]) for o in r["overrides"]] == [
        ("baseline", "carol", "first rollout on this line")
    ]
    shown = pair.server.cli_json("rollout", "status", rid)
    assert [(v["gate"], v["verdict"]) for v in shown["verdicts"]] == [("baseline", "inconclusive")]
    assert shown["overrides"] == r["overrides"]
    assert pair.server.cli("rollout", "status", rid).returncode == 0  # the table with the verdict lines
