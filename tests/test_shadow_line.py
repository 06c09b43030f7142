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
from edge_agent.updater import store_dir
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
