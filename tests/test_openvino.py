"""A real second execution provider: the agent on ``OpenVINOExecutionProvider`` in its own environment.

Integration tests (``-m integration``): the session fixture builds (or reuses) the
``onnxruntime-openvino`` environment (tests/openvino_support.py); each test starts a real
``edge-agent run`` there against a real Mosquitto and reads what the agent itself reports
(the retained state message, events, ``edge-agent status --json``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sim.rig import write_agent_config
from tests.conftest import AgentProcess
from tests.fault_support import record
from tests.mqtt import Collector, Mosquitto
from tests.openvino_support import openvino_python

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "models" / "releases" / "shapes-1.0.0"
ROOT = "lineside/v1"
OV = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="session")
def ov_python() -> Path:
    return openvino_python()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("rec") / "ov", frames=60, seed=5, fps=30)


def _config(tmp_path: Path, device: str, bundle: Path, recording: Path, broker: str, inference: str) -> Path:
    return write_agent_config(
        tmp_path / f"{device}.toml",
        device_id=device,
        state_dir=tmp_path / device,
        bundle=bundle,
        source={"uri": recording, "loop": True},
        broker={"url": broker, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        telemetry={"window_s": 1.0},
        inference=tomllib.loads("[inference]\n" + inference)["inference"],  # its sub-tables too
    )


class _OvAgent:
    """``edge-agent run`` under the OpenVINO environment's python, this checkout's code."""

    def __init__(self, python: Path, config: Path, log: Path) -> None:
        self.python = python
        self.env = {"PYTHONPATH": str(REPO)}
        self.proc = AgentProcess(config, log, [], self.env)
        self.proc.args = [str(python), "-m", "edge_agent.cli", "-v", "run", "--config", str(config)]

    def __enter__(self) -> _OvAgent:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()
        print(f"--- agent log ---\n{self.proc.log()[-4000:]}")

    def status(self, state_dir: Path) -> dict[str, Any]:
        out = subprocess.run(
            [str(self.python), "-m", "edge_agent.cli", "status", "--json", "--state-dir", str(state_dir)],
            capture_output=True, text=True, check=False, cwd=REPO, env={**self.proc.env},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))


def _serving_state(c: Collector, device: str, timeout: float = 90) -> dict[str, Any]:
    """The agent's state once it serves frames (telemetry counted some)."""
    c.wait_for(lambda c: sum(t["frames"] for t in c.payloads(f"{device}/telemetry")) > 0, timeout=timeout)
    states = [s for s in c.payloads(f"{device}/state") if s["online"]]
    assert states, "no online state message"
    return dict(states[-1])


def test_agent_serves_frames_on_openvino_and_reports_it(
    ov_python: Path, mosquitto: Mosquitto, recording: Path, tmp_path: Path
) -> None:
    device = "ov-1"
    cfg = _config(tmp_path, device, SHAPES, recording, mosquitto.url, 'providers = ["openvino"]')
    with (
        Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/{device}/#") as c,
        _OvAgent(ov_python, cfg, tmp_path / "agent.log") as agent,
    ):
        state = _serving_state(c, device)
        assert state["execution_provider"] == OV
        assert state["runtime_build"].startswith("onnxruntime-openvino==")
        status = agent.status(tmp_path / device)
        assert status["provider"] == OV and status["frames"] > 0
        assert status["runtime_builds_installed"] == [status["runtime_build"]]
        assert status["runtime_conflict"] is False
        # A single candidate is a pin: served without timing.
        assert state["provider_timings_ms"] == {}


def test_openvino_option_that_fails_to_initialise_falls_back_to_cpu(
    ov_python: Path, mosquitto: Mosquitto, recording: Path, tmp_path: Path
) -> None:
    # No NPU on the test machine: OpenVINO refuses the device and ONNX Runtime drops the provider.
    device = "ov-fallback"
    inference = (
        'providers = ["openvino", "cpu"]\npin_provider = true\n'
        '[inference.provider_options.OpenVINOExecutionProvider]\ndevice_type = "NPU"'
    )
    cfg = _config(tmp_path, device, SHAPES, recording, mosquitto.url, inference)
    with (
        Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/{device}/#") as c,
        _OvAgent(ov_python, cfg, tmp_path / "agent.log"),
    ):
        state = _serving_state(c, device)
        assert state["execution_provider"] == CPU
        fallback = c.wait_for(
            lambda c: [e for e in c.payloads(f"{device}/events") if e["kind"] == "provider.fallback"],
            timeout=10,
        )[0]
        assert fallback["level"] == "warning"
        assert fallback["data"]["provider"] == OV and fallback["data"]["serving"] == CPU


def test_provider_is_chosen_by_measured_selftest_time(
    ov_python: Path, mosquitto: Mosquitto, recording: Path, tmp_path: Path
) -> None:
    device = "ov-measure"
    cfg = _config(tmp_path, device, SHAPES, recording, mosquitto.url, 'providers = ["openvino", "cpu"]')
    with (
        Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/{device}/#") as c,
        _OvAgent(ov_python, cfg, tmp_path / "agent.log") as agent,
    ):
        state = _serving_state(c, device)
        timings = state["provider_timings_ms"]
        # Both candidates passed their self-test and were timed; the faster one serves.
        assert set(timings) == {OV, CPU}
        assert state["execution_provider"] == min(timings, key=timings.__getitem__)
        assert agent.status(tmp_path / device)["provider_timings_ms"] == timings


def test_per_provider_tolerance_in_the_manifest_rules_a_provider_out(
    ov_python: Path, mosquitto: Mosquitto, recording: Path, tmp_path: Path
) -> None:
    # OpenVINO's outputs differ from the golden CPU outputs by ~8e-6 on this model; a manifest
    # that declares a tighter tolerance for OpenVINO alone makes its self-test fail there.
    bundle = tmp_path / "strict"
    shutil.copytree(SHAPES, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.setdefault("selftest", {})["providers"] = {OV: {"atol": 1e-9, "rtol": 0.0}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    device = "ov-strict"
    cfg = _config(tmp_path, device, bundle, recording, mosquitto.url, 'providers = ["openvino", "cpu"]')
    with (
        Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/{device}/#") as c,
        _OvAgent(ov_python, cfg, tmp_path / "agent.log"),
    ):
        state = _serving_state(c, device)
        assert state["execution_provider"] == CPU
        assert set(state["provider_timings_ms"]) == {CPU}
        fallback = c.wait_for(
            lambda c: [e for e in c.payloads(f"{device}/events") if e["kind"] == "provider.fallback"],
            timeout=10,
        )[0]
        assert fallback["data"]["provider"] == OV


def test_two_builds_installed_at_once_are_reported_by_a_running_agent(
    mosquitto: Mosquitto, recording: Path, tmp_path: Path
) -> None:
    """This environment's CPU build plus a second build's metadata on the path, as a botched swap leaves."""
    import sys

    site = tmp_path / "site"
    info = site / "onnxruntime_gpu-1.24.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.24.1\n")
    (info / "RECORD").write_text(f"onnxruntime/__init__.py,,\n{info.name}/METADATA,,\n")
    device = "two-builds"
    cfg = _config(tmp_path, device, SHAPES, recording, mosquitto.url, 'providers = ["cpu"]')
    env = {"PYTHONPATH": f"{site}:{REPO}"}
    agent = AgentProcess(cfg, tmp_path / "agent.log", [], env)
    agent.args = [sys.executable, "-m", "edge_agent.cli", "-v", "run", "--config", str(cfg)]
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/{device}/#") as c:
        agent.start()
        try:
            _serving_state(c, device)
            conflict = c.wait_for(
                lambda c: [e for e in c.payloads(f"{device}/events") if e["kind"] == "runtime.conflict"],
                timeout=10,
            )[0]
            assert conflict["level"] == "warning"
            assert "onnxruntime-gpu==1.24.1" in conflict["data"]["installed"]
            out = subprocess.run(
                [sys.executable, "-m", "edge_agent.cli", "status", "--json", "--state-dir", str(tmp_path / device)],
                capture_output=True, text=True, check=False, cwd=REPO, env={**agent.env},
            )  # fmt: skip
            status = json.loads(out.stdout)
            assert status["runtime_conflict"] is True and len(status["runtime_builds_installed"]) == 2
        finally:
            agent.stop()
