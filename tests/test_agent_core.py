"""The agent in-process with fakes: frame loop, telemetry, events, commands, model swap, camera loss."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Agent, Decision
from edge_agent.messages import DeployCommand, Event, Telemetry
from edge_agent.runtime import ModelRunner
from edge_agent.spool import Spool
from lineside_common.errors import ModelLoadError
from models.synthetic import make_bundle
from tests.agent_fakes import ListSource, SpoolDrainingPublisher, agent_config, images
from tests.mqtt import wait_until


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "confident": make_bundle(root / "confident", behaviour="confident"),
        "unconfident": make_bundle(root / "unconfident", version="2.0.0", behaviour="unconfident"),
        "nan": make_bundle(root / "nan", version="3.0.0", behaviour="nan"),
    }


def make_agent(
    tmp_path: Path, bundle: Path, source: ListSource, **over: Any
) -> tuple[Agent, SpoolDrainingPublisher]:
    config = agent_config(tmp_path / "state", **over)
    spool = Spool(config.state_dir / "spool")
    pub = SpoolDrainingPublisher(spool)
    decisions: list[Decision] = []
    agent = Agent(config, source, pub, ModelRunner.load(bundle), spool=spool, on_decision=decisions.append)
    agent.decisions = decisions  # type: ignore[attr-defined]
    return agent, pub


def run_until(agent: Agent, predicate: Any, timeout: float = 20.0) -> None:
    agent.start()
    try:
        wait_until(predicate, timeout, what="agent condition")
    finally:
        agent.stop()


def test_every_frame_is_decided_and_counted_in_telemetry(tmp_path: Path, bundles: dict[str, Path]) -> None:
    src = ListSource(images(60))
    agent, pub = make_agent(tmp_path, bundles["confident"], src)
    run_until(agent, lambda: agent.frames_total == 60)
    windows = [Telemetry.model_validate(t) for t in pub.of("telemetry")]
    assert [w.seq for w in windows] == list(range(len(windows)))
    assert sum(w.frames for w in windows) == 60
    assert sum(sum(w.class_histogram.values()) for w in windows) == 60
    assert (
        sum(w.class_histogram.get("circle-80", 0) for w in windows) == 60
    )  # the confident model says label 0
    assert all(w.model is not None and w.model.name == "tiny" for w in windows)
    assert [d.frame_id for d in agent.decisions] == list(range(60))  # type: ignore[attr-defined]
    assert len(pub.decisions) == 60 and pub.decisions[0]["label"] == "circle-80"
    kinds = [e["kind"] for e in pub.events()]
    assert kinds[0] == "agent.started" and kinds[-1] == "agent.stopping"
    assert [e["seq"] for e in pub.events()] == list(range(len(kinds)))
    assert pub.states[0]["online"] is True and pub.states[-1]["online"] is False
    assert pub.states[0]["execution_provider"] == "CPUExecutionProvider"
    assert pub.stopped and src.closed


def test_seq_continues_across_agent_restarts(tmp_path: Path, bundles: dict[str, Path]) -> None:
    agent, pub = make_agent(tmp_path, bundles["confident"], ListSource(images(5)))
    run_until(agent, lambda: agent.frames_total == 5)
    agent2, pub2 = make_agent(tmp_path, bundles["confident"], ListSource(images(5)))
    run_until(agent2, lambda: agent2.frames_total == 5)
    t1, t2 = [t["seq"] for t in pub.of("telemetry")], [t["seq"] for t in pub2.of("telemetry")]
    e1, e2 = [e["seq"] for e in pub.events()], [e["seq"] for e in pub2.events()]
    assert t2[0] == t1[-1] + 1 and e2[0] == e1[-1] + 1


def test_nonfinite_model_outputs_are_counted(tmp_path: Path, bundles: dict[str, Path]) -> None:
    agent, pub = make_agent(tmp_path, bundles["nan"], ListSource(images(20)))
    run_until(agent, lambda: agent.frames_total == 20)
    windows = pub.of("telemetry")
    assert sum(w["nonfinite"] for w in windows) == 20
    assert sum(sum(w["class_histogram"].values()) for w in windows) == 0


def test_swap_runner_between_frames_drops_nothing(tmp_path: Path, bundles: dict[str, Path]) -> None:
    src = ListSource(images(400), period_s=0.002)
    agent, pub = make_agent(tmp_path, bundles["confident"], src)
    agent.start()
    try:
        wait_until(lambda: agent.frames_total >= 50, 20)
        new = ModelRunner.load(bundles["unconfident"])
        old = agent.swap_runner(new)
        assert old.manifest.version == "1.0.0" and agent.runner is new
        old.close()
        wait_until(lambda: agent.frames_total == 400, 30)
    finally:
        agent.stop()
    decisions: list[Decision] = agent.decisions  # type: ignore[attr-defined]
    assert [d.frame_id for d in decisions] == list(range(400))
    confs = [d.confidence for d in decisions]
    switch = next(i for i, c in enumerate(confs) if c < 0.5)
    assert all(c > 0.99 for c in confs[:switch]) and all(c < 0.5 for c in confs[switch:])
    versions = {w["model"]["version"] for w in pub.of("telemetry")}
    assert versions == {"1.0.0", "2.0.0"}
    assert any(s["active_model"]["version"] == "2.0.0" for s in pub.states)


def test_drift_event_once_per_episode(tmp_path: Path, bundles: dict[str, Path]) -> None:
    # The unconfident model's confidence (1/3) is far below its manifest's baseline: sustained drift.
    src = ListSource(images(3000), period_s=0.001)
    agent, pub = make_agent(tmp_path, bundles["unconfident"], src, **{"telemetry.window_s": 0.1})
    run_until(agent, lambda: len(pub.of("telemetry")) >= 8)
    drift = pub.events("drift")
    assert len(drift) == 1, drift
    ev = Event.model_validate(drift[0])
    assert ev.data["state"] == "drifting" and ev.level == "warning"
    assert ev.data["baseline"]["p50"] - ev.data["windows"][-1]["confidence_p50"] > 0.1


def test_lost_camera_is_reported_and_reconnected(tmp_path: Path, bundles: dict[str, Path]) -> None:
    src = ListSource(images(30), lose_at=10)
    agent, pub = make_agent(tmp_path, bundles["confident"], src)
    agent.start()
    try:
        wait_until(lambda: pub.events("camera.lost"), 10)
        wait_until(lambda: src.reopens >= 2, 10)  # keeps trying while the camera is away
        assert agent.capture.state == "lost" and agent.capture.alive
        src.restore()
        wait_until(lambda: pub.events("camera.restored"), 10)
        wait_until(lambda: agent.frames_total == 30, 10)
    finally:
        agent.stop()
    lost = pub.events("camera.lost")[0]
    assert lost["level"] == "warning" and "unplugged" in lost["message"]


def test_commands(tmp_path: Path, bundles: dict[str, Path]) -> None:
    agent, pub = make_agent(tmp_path, bundles["confident"], ListSource(images(1)))
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def deploy(cmd: DeployCommand) -> None:
        seen.append((cmd.name, threading.current_thread().name))
        done.set()

    agent.set_command_handler("deploy", deploy)
    with pytest.raises(ValueError):
        agent.set_command_handler("ping", deploy)
    agent.start()
    try:
        assert pub.on_command is not None
        topic = "lineside/v1/devices/dev-1/cmd"
        pub.on_command(topic, b'{"type": "ping", "cmd_id": "c1"}')
        pub.on_command(topic, b"not json")
        pub.on_command(topic, b'{"type": "selfdestruct", "cmd_id": "c2"}')
        pub.on_command(topic, b'{"type": "rollback", "cmd_id": "c3"}')
        pub.on_command(topic, b'{"type": "deploy", "cmd_id": "c4", "name": "shapes", "version": "2.0.0"}')
        wait_until(lambda: len(pub.events("message.rejected")) == 2 and pub.events("command.rejected"), 10)
        assert done.wait(10)
    finally:
        agent.stop()
    assert pub.events("pong")[0]["cmd_id"] == "c1"
    rejected = pub.events("command.rejected")
    # No handler: a warning naming the type; a handler that fails is an error naming its exception.
    assert rejected[0]["cmd_id"] == "c3" and rejected[0]["level"] == "warning"
    assert rejected[0]["data"] == {"type": "rollback"}
    assert seen == [("shapes", "commands")]


def test_failing_handler_is_rejected_not_crashed(tmp_path: Path, bundles: dict[str, Path]) -> None:
    agent, pub = make_agent(tmp_path, bundles["confident"], ListSource(images(1)))

    def boom(cmd: Any) -> None:
        raise RuntimeError("disk on fire")

    agent.set_command_handler("capture", boom)
    agent.commands.handle("t", b'{"type": "capture", "cmd_id": "c9", "count": 3}')
    ev = pub.events("command.rejected")[0]
    assert ev["cmd_id"] == "c9" and ev["level"] == "error"
    assert ev["data"] == {"type": "capture", "error": "RuntimeError"}


def test_status_file_written(tmp_path: Path, bundles: dict[str, Path]) -> None:
    from edge_agent.service import read_status

    agent, _pub = make_agent(tmp_path, bundles["confident"], ListSource(images(10)))
    agent.start()
    try:
        wait_until(lambda: (read_status(agent.config.state_dir) or {}).get("frames") == 10, 10)
        st = read_status(agent.config.state_dir)
        assert st is not None and st["running"] and st["model"]["name"] == "tiny"
        assert st["provider"] == "CPUExecutionProvider" and "spool_depth" in st
    finally:
        agent.stop()
    st = read_status(agent.config.state_dir)
    assert st is not None and not st["running"]


def test_bad_model_file_is_a_clear_error(tmp_path: Path, bundles: dict[str, Path]) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundles["confident"], bad)
    (bad / "model.onnx").write_bytes(b"this is not onnx")
    with pytest.raises(ModelLoadError, match="cannot load"):
        ModelRunner.load(bad)
    (bad / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.onnx"):
        ModelRunner.load(bad)
    (bad / "manifest.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="manifest"):
        ModelRunner.load(bad)


def test_provider_fallback_is_reported(bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from edge_agent.config import InferenceConfig

    # Pretend CUDA is installed: on this CPU-only build it cannot initialise.
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    fallbacks: list[tuple[str, str]] = []
    runner = ModelRunner.load(
        bundles["confident"],
        inference=InferenceConfig(providers=["cuda", "cpu"]),
        on_fallback=lambda p, why: fallbacks.append((p, why)),
    )
    assert runner.provider == "CPUExecutionProvider"
    assert [p for p, _ in fallbacks] == ["CUDAExecutionProvider"]


def test_runner_interface(bundles: dict[str, Path]) -> None:
    import hashlib

    r = ModelRunner.load(bundles["confident"])
    assert r.sha256 == hashlib.sha256((bundles["confident"] / "manifest.json").read_bytes()).hexdigest()
    assert r.model_ref().sha256 == r.sha256
    img = np.zeros((40, 50, 3), np.uint8)
    outs = r.run_tensor(r.preprocess(img))
    assert len(outs) == len(r.output_names)
    assert r.predict(img).label_index == 0
    r.close()
    with pytest.raises(ModelLoadError):
        r.predict(img)


def test_retained_state_is_republished_when_what_it_reports_changes(
    tmp_path: Path, bundles: dict[str, Path]
) -> None:
    # Probation passing swaps nothing, yet the fleet must see probation end (issue 13).
    src = ListSource(images(10_000))
    agent, pub = make_agent(tmp_path, bundles["confident"], src)
    on_probation = [True]
    active = agent.state().active_model
    agent.set_model_info(lambda: (active, None, on_probation[0]))
    agent.start()
    try:
        wait_until(lambda: pub.states and pub.states[-1]["probation"] is True, 10, what="first state")
        published = len(pub.states)
        wait_until(lambda: len(pub.of("telemetry")) >= 3, 10, what="windows")
        assert len(pub.states) == published, "republished although nothing changed"
        on_probation[0] = False
        wait_until(lambda: pub.states[-1]["probation"] is False, 10, what="state after probation")
    finally:
        agent.stop()
