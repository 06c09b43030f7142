"""Bring your own model, end to end, with the command lines alone.

A classifier our pipeline did not train (fixed weights, NHWC, built with onnx.helper) is
packaged with ``edge-models package`` (letterbox and per-channel scale: a schema-2 manifest),
released with ``fleet release``, rolled out with ``fleet rollout start`` to a real
``edge-agent`` that was serving our own synthetic ``shapes`` model and whose camera is a
folder of images the test made. The agent's decisions on the new model are checked against
the answers known for each image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import AgentProcess
from tests.fault_support import agent_toml
from tests.fleet_support import FleetServer, make_keys, wait_for
from tests.foreign_model import LABELS, colour_classifier, write_frames
from tests.mqtt import Collector, Mosquitto

pytestmark = pytest.mark.integration
ROOT = "lineside/v1"
CAMERA = ["red", "green", "blue", "blue", "green", "red", "green", "red", "blue"]


def _edge_models(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "edge-models"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "models.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False)


def test_a_foreign_classifier_is_packaged_released_rolled_out_and_right(
    tmp_path: Path, mosquitto: Mosquitto, edge_agent_process: Callable[..., AgentProcess]
) -> None:
    from models.synthetic import make_bundle

    model = tmp_path / "colours.onnx"
    model.write_bytes(colour_classifier())
    samples = tmp_path / "samples"
    write_frames(samples, LABELS * 4, per_label_dirs=True, seed=1000)
    bundle = tmp_path / "colours-1.0.0"
    packaged = _edge_models(
        "package", str(model), "--out", str(bundle), "--samples", str(samples),
        "--name", "colours", "--version", "1.0.0", "--labels", ",".join(LABELS),
        "--layout", "NHWC", "--color-order", "RGB", "--resize", "letterbox", "--pad-value", "114",
        "--scale", "1/255,1/255,1/255", "--probation-s", "1.5", "--probation-min-frames", "10",
    )  # fmt: skip
    assert packaged.returncode == 0, packaged.stderr
    assert json.loads((bundle / "manifest.json").read_text())["schema_version"] == 2

    keys = make_keys(tmp_path)
    server = FleetServer(tmp_path, mosquitto.url, keys).start()
    try:
        server.cli(
            "release", str(bundle), "--keys", str(keys), "--server", server.url, "--token", server.token
        )
        camera = tmp_path / "camera"
        write_frames(camera, CAMERA, seed=2000)
        device = "byom-1"
        first = make_bundle(tmp_path / "shapes-1.0.0", name="shapes", version="1.0.0")
        token_file = tmp_path / f"{device}.http-token"  # model files need the robot's own token
        server.cli("devices", "token", device, "--out", str(token_file))
        config = agent_toml(
            tmp_path / "agent.toml", device=device, state=tmp_path / "state", source=camera,
            broker=mosquitto.url, bundle=first, window_s=0.5, source_extra={"fps": 20.0},
            updates={"root_json": keys / "root.json", "repository_url": server.url, "token_file": token_file,
                     "fetch_backoff_s": 0.2, "fetch_backoff_max_s": 1.0},
        )  # fmt: skip
        with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/{device}/#") as c:
            agent = edge_agent_process(config)
            wait_for(
                lambda: any(
                    d["device_id"] == device and d["online"] for d in server.cli_json("devices", "list")
                ),
                30,
                "the agent online at the fleet server",
            )
            # The rollout's quality gate compares against the device's windows before it: let three arrive.
            wait_for(
                lambda: len(server.cli_json("devices", "show", device).get("recent_telemetry", [])) >= 3,
                30,
                "three telemetry windows before the rollout (the gate's baseline)",
            )
            rollout = server.cli_json(
                "rollout", "start", "colours@1.0.0", "--devices", device, "--stages", "100%",
                "--soak", "1s", "--min-gate-frames", "10",
            )  # fmt: skip
            wait_for(
                lambda: server.cli_json("rollout", "status", rollout["id"])["state"] != "running",
                90,
                "the rollout to finish",
            )
            status = server.cli_json("rollout", "status", rollout["id"])
            assert status["state"] == "succeeded", (status, agent.log()[-3000:])
            states = [s for s in c.payloads(f"{device}/state") if s.get("active_model")]
            assert states and states[-1]["active_model"]["name"] == "colours", states[-1:]
            # Decisions by the new model (its labels; the old one's are package shapes).
            wait_for(
                lambda: sum(d["label"] in LABELS for d in c.payloads(f"{device}/decisions")) >= 40,
                30,
                "40 decisions from the packaged model",
            )
        decisions = [d for d in c.payloads(f"{device}/decisions") if d["label"] in LABELS]
        wrong = [
            (d["frame_id"], d["label"])
            for d in decisions
            if d["label"] != CAMERA[d["frame_id"] % len(CAMERA)]
        ]
        assert not wrong, wrong[:10]
        assert {d["label"] for d in decisions} == set(LABELS)
        assert agent.stop() == 0, agent.log()[-3000:]
    finally:
        server.stop()
