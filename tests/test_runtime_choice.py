"""Which onnxruntime build is installed, and which execution provider serves (pure parts + load on CPU).

The OpenVINO provider for real is in ``tests/test_openvino.py`` (its own environment).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import InferenceConfig
from edge_agent.manifest import SelftestSpec, SelftestTolerance
from edge_agent.runtime import (
    CPU,
    ModelRunner,
    ProviderTrial,
    choose_provider,
    is_pinned,
    runtime_builds,
    serving_build,
)

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "models" / "releases" / "shapes-1.0.0"
OV = "OpenVINOExecutionProvider"


def _fake_build(site: Path, dist: str, version: str) -> None:
    """A dist-info that claims the ``onnxruntime`` module, as a second build's install leaves."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"onnxruntime/__init__.py,,\n{info.name}/METADATA,,\n")


def test_one_build_is_no_conflict() -> None:
    build = runtime_builds()
    assert len(build.installed) == 1 and not build.conflict
    assert build.serving in build.installed


def test_two_builds_installed_at_once_are_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, "onnxruntime-openvino", "1.24.1")
    monkeypatch.syspath_prepend(str(tmp_path))
    build = runtime_builds()
    assert build.conflict
    assert "onnxruntime-openvino==1.24.1" in build.installed and len(build.installed) == 2


def test_a_package_named_onnxruntime_that_is_not_a_build_does_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "onnxruntime_extensions-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-extensions\nVersion: 0.1\n")
    (info / "RECORD").write_text("onnxruntime_extensions/__init__.py,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not runtime_builds().conflict


def test_serving_build_matches_the_module_version() -> None:
    installed = ("onnxruntime-openvino==1.24.1", "onnxruntime==1.32.0")
    assert serving_build(installed, "1.32.0") == "onnxruntime==1.32.0"
    assert serving_build(installed, "1.24.1") == "onnxruntime-openvino==1.24.1"
    assert serving_build((), "1.2.3") == "onnxruntime==1.2.3"


def test_choose_fastest_that_passed() -> None:
    trials = [
        ProviderTrial(OV, selftest_ms=0.56),
        ProviderTrial("CUDAExecutionProvider", failed="selftest off"),
        ProviderTrial(CPU, selftest_ms=0.39),
    ]
    assert choose_provider(trials) == CPU
    assert choose_provider([ProviderTrial(OV, selftest_ms=0.3), ProviderTrial(CPU, selftest_ms=0.39)]) == OV
    # A tie keeps the preference order.
    assert choose_provider([ProviderTrial(OV, selftest_ms=0.4), ProviderTrial(CPU, selftest_ms=0.4)]) == OV
    assert choose_provider([ProviderTrial(OV, failed="x")]) is None


def test_pin() -> None:
    assert is_pinned(InferenceConfig(), [CPU])
    assert not is_pinned(InferenceConfig(), [OV, CPU])
    assert is_pinned(InferenceConfig(pin_provider=True), [OV, CPU])


def test_per_provider_tolerance_with_default() -> None:
    spec = SelftestSpec(atol=1e-3, rtol=1e-3, providers={OV: SelftestTolerance(atol=1e-2, rtol=0.0)})
    assert spec.tolerance_for(OV) == (1e-2, 0.0)
    assert spec.tolerance_for(CPU) == (1e-3, 1e-3)
    # Older manifests have no per-provider section: the default applies.
    assert SelftestSpec.model_validate({"atol": 1e-4}).tolerance_for(OV) == (1e-4, 1e-3)


def test_cpu_only_build_serves_on_cpu_without_timing() -> None:
    runner = ModelRunner.load(SHAPES, inference=InferenceConfig())
    assert runner.provider == CPU and not runner.choice.measured and runner.choice.timings_ms == {}


def test_cpu_affinity_pins_only_the_inference_thread(tmp_path: Path) -> None:
    import os

    from edge_agent.agent import Agent
    from edge_agent.spool import Spool
    from tests.agent_fakes import ListSource, SpoolDrainingPublisher, agent_config, images
    from tests.mqtt import wait_until

    allowed = os.sched_getaffinity(0)
    core = max(allowed)
    config = agent_config(tmp_path / "state", **{"inference.cpu_affinity": [core]})
    spool = Spool(config.state_dir / "spool")
    agent = Agent(
        config, ListSource(images(20)), SpoolDrainingPublisher(spool), ModelRunner.load(SHAPES), spool=spool
    )
    agent.start()
    try:
        wait_until(lambda: agent.frames_total == 20, 20, what="frames decided")
        thread_id = agent._inference_thread.native_id
        assert thread_id is not None
        assert os.sched_getaffinity(thread_id) == {core}
        assert os.sched_getaffinity(0) == allowed  # the process (this thread) is untouched
    finally:
        agent.stop()


def test_openvino_thread_count_follows_the_config() -> None:
    from edge_agent.runtime import provider_options

    assert provider_options(OV, InferenceConfig(intra_op_num_threads=1))["num_of_threads"] == "1"
    assert "num_of_threads" not in provider_options(OV, InferenceConfig(intra_op_num_threads=0))
    # An explicit option in config wins.
    cfg = InferenceConfig(provider_options={OV: {"num_of_threads": "2"}})
    assert provider_options(OV, cfg)["num_of_threads"] == "2"


def test_install_event_carries_the_provider_choice() -> None:
    from edge_agent.updates import provider_choice as _provider_choice

    runner = ModelRunner.load(SHAPES, inference=InferenceConfig())
    assert _provider_choice(runner) == {"provider": CPU, "provider_timings_ms": {}}
    runner.choice.timings_ms = {OV: 0.5, CPU: 0.4}
    assert _provider_choice(runner)["provider_timings_ms"] == {OV: 0.5, CPU: 0.4}
    assert _provider_choice(object()) == {}  # a runner that does not choose (a plain session)
