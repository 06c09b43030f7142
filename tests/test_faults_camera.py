"""The camera vanishes and returns under a running ``edge-agent run``: camera.lost, then
camera.restored; the agent never exits, classification resumes, and no event or telemetry
sequence number is skipped.

The 'camera' is a real recording directory replayed at its frame rate; it is moved away (as an
unplugged USB camera disappears from /dev) and moved back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import AgentProcess
from tests.fault_support import agent_toml, record, seq_gaps
from tests.mqtt import Collector, Mosquitto, wait_until

pytestmark = pytest.mark.integration
ROOT = "lineside/v1"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", behaviour="confident")


def _frames_since(col: Collector, since: float) -> int:
    return sum(m.json()["frames"] for m in col.messages("/telemetry") if m.at >= since)


def test_camera_lost_and_restored_under_a_running_agent(
    tmp_path: Path,
    mosquitto: Mosquitto,
    edge_agent_process: Callable[..., AgentProcess],
    bundle: Path,
) -> None:
    cam = record(tmp_path / "camera", frames=20, fps=30)
    away = tmp_path / "unplugged"
    config = agent_toml(
        tmp_path / "agent.toml",
        device="cam-1",
        state=tmp_path / "state",
        source=cam,
        broker=mosquitto.url,
        bundle=bundle,
        window_s=0.5,
    )
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/cam-1/#") as col:
        agent = edge_agent_process(config)
        wait_until(lambda: _frames_since(col, 0) >= 30, 60, what="agent classifying frames")

        cam.rename(away)  # the camera goes away
        lost = wait_until(
            lambda: [e for e in col.payloads("/events") if e["kind"] == "camera.lost"], 30, what="camera.lost"
        )
        assert lost[0]["level"] == "warning" and "no such file" in lost[0]["message"].lower()
        assert agent.running, agent.log()[-3000:]
        # While it is away, nothing is classified.
        t_lost = col.messages("/events")[-1].at
        wait_until(lambda: len([m for m in col.messages("/telemetry") if m.at > t_lost]) >= 3, 20)
        assert _frames_since(col, t_lost + 1.0) == 0

        away.rename(cam)  # and comes back
        restored = wait_until(
            lambda: [e for e in col.payloads("/events") if e["kind"] == "camera.restored"],
            30,
            what="camera.restored",
        )
        t_back = next(m.at for m in col.messages("/events") if m.json()["kind"] == "camera.restored")
        wait_until(lambda: _frames_since(col, t_back) >= 30, 30, what="classification resumed")
        assert agent.running
        assert "back after" in restored[0]["message"]
        assert agent.stop() == 0, agent.log()[-3000:]

    for channel in ("/events", "/telemetry"):
        seqs = [p["seq"] for p in col.payloads(channel)]
        assert seq_gaps(seqs) == [], (channel, seqs)
