"""Every benchmark in quick (smoke) mode, so none can rot. No timing assertions: only that each
runs, measures every peer it promises and reports its acceptance checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS
from benchmarks.__main__ import main
from benchmarks.common import Context, Section, proc_cpu_s, proc_rss_mb
from benchmarks.report import markdown
from benchmarks.services import find_mosquitto
from tests.mqtt import wait_until
from tests.pg_support import in_ci


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    """One quick context for the module: bundles and recordings are built once."""
    yield Context(quick=True, workdir=tmp_path_factory.mktemp("bench"))


def _peers(section: Section) -> set[str]:
    return {str(row[0]) for row in section.rows}


def test_pipeline_measures_every_peer_for_1_and_2_threads(ctx: Context) -> None:
    s = BENCHMARKS["pipeline"](ctx)
    assert s.error is None
    assert {"agent", "minimal loop", "bare InferenceSession.run", "cv2.dnn loop", "OpenVINO loop"} <= _peers(
        s
    )
    assert {row[1] for row in s.rows} == {1, 2}
    agent_rows = [r for r in s.rows if r[0] == "agent"]
    assert all(int(r[2]) > 0 for r in agent_rows)  # the agent decided frames
    names = [c.name for c in s.checks]
    assert any("throughput" in n for n in names) and any("CPU/frame" in n for n in names)


def test_realtime_reports_30_and_60_fps(ctx: Context) -> None:
    s = BENCHMARKS["realtime"](ctx)
    assert [r[0] for r in s.rows] == ["30", "60"]
    assert all(int(r[1]) + int(r[2]) > 0 for r in s.rows)
    assert any("30 fps" in c.name for c in s.checks)


def test_local_output_reports_socket_and_opcua_latency(ctx: Context) -> None:
    s = BENCHMARKS["local_output"](ctx)
    assert [r[0] for r in s.rows] == ["decision callback (baseline)", "unix socket", "OPC UA result events"]
    assert all(int(r[1]) > 0 for r in s.rows)


def test_shadow_runs_beside_serving_and_counts_its_frames(ctx: Context) -> None:
    s = BENCHMARKS["shadow"](ctx)
    assert s.error is None
    assert [r[0] for r in s.rows] == ["off", "every 3", "every 1"]
    assert s.rows[0][7] == 0 and int(s.rows[2][7]) > 0  # frames shadowed: none off, some on
    assert any("dropped" in c.name for c in s.checks)


def test_sampling_compares_capture_off_default_and_every_frame(ctx: Context) -> None:
    s = BENCHMARKS["sampling"](ctx)
    assert [r[0] for r in s.rows] == ["off", "default", "every frame"]
    assert all(int(r[1]) > 0 for r in s.rows)  # each mode served frames
    assert int(s.rows[0][3]) == 0 and int(s.rows[2][3]) > 0  # off stores nothing; every frame does


def test_swap_adopts_the_new_model(ctx: Context) -> None:
    s = BENCHMARKS["swap"](ctx)
    rates = [r[0] for r in s.rows]
    assert len(s.rows) == 5 and rates[0] == rates[1] == "flat out (unpaced)" and rates[4] == "30 (camera)"
    # Flat out and at 50 % load, each unpinned and with the inference thread pinned to a core.
    assert [r[1] == "unpinned" for r in s.rows] == [True, False, True, False, True]
    assert all(int(r[3]) > 0 for r in s.rows)  # frames were decided
    assert s.rows[0][4] == 0 and s.rows[1][4] == 0  # unpaced: the frame queue waits, it never drops
    assert len([c for c in s.checks if "dropped" in c.name]) == 3  # the paced rates
    gap_checks = [c for c in s.checks if "largest swap gap" in c.name]
    assert len(gap_checks) == 5 and all("median of" in c.name for c in gap_checks)


def test_swap_gap_bound_is_the_larger_of_frame_time_and_background() -> None:
    from benchmarks.swap import gap_bound

    assert gap_bound(1.0, 1.0) == 3.0
    assert gap_bound(1.0, 4.0) == 6.0


def test_quantisation_compares_int8_with_fp32(ctx: Context) -> None:
    s = BENCHMARKS["quantisation"](ctx)
    assert [r[0] for r in s.rows] == ["FP32", "INT8", "INT8/FP32"]
    fp32_bytes, int8_bytes = s.rows[0][1], s.rows[1][1]
    assert fp32_bytes > 0 and int8_bytes > 0


def test_accelerators_say_not_available_without_a_gpu(ctx: Context) -> None:
    import onnxruntime as ort

    s = BENCHMARKS["accelerators"](ctx)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert any("not available" in str(r[3]) for r in s.rows)
        assert any("--only accelerators" in n for n in s.notes)
        assert [c.ok for c in s.checks] == [None]


# Under CI=true a missing mosquitto fails these tests instead of skipping them (tests/pg_support.py).
needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None and not in_ci(), reason="mosquitto is not installed"
)


@pytest.mark.integration
@needs_mosquitto
def test_startup_times_a_real_edge_agent_process(ctx: Context) -> None:
    s = BENCHMARKS["startup"](ctx)
    assert s.rows[0][0] == "edge-agent run"
    assert float(s.rows[0][1]) > 0 and float(s.rows[0][2]) > 0


@pytest.mark.integration
@needs_mosquitto
def test_fleet_rolls_out_to_simulated_devices(ctx: Context) -> None:
    s = BENCHMARKS["fleet"](ctx)
    assert s.rows and s.rows[0][0] == 20
    rollout = [c for c in s.checks if c.name.startswith("rollout")]
    assert rollout and rollout[0].ok, rollout  # 20 devices on loopback must all pass


@pytest.mark.integration
@needs_mosquitto
def test_replicas_roll_out_to_200_devices_with_one_and_two_servers(ctx: Context) -> None:
    s = BENCHMARKS["replicas"](ctx)
    assert [(row[0], row[1]) for row in s.rows] == [(200, 1), (200, 2)]
    rollouts = [c for c in s.checks if c.name.startswith("rollout")]
    assert len(rollouts) == 2 and all(c.ok for c in rollouts), rollouts  # no timing asserted


def test_cli_writes_markdown_with_command_and_machine(tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    assert (
        main(["--quick", "--only", "accelerators", "--out", str(out), "--workdir", str(tmp_path / "w")]) == 0
    )
    text = out.read_text()
    assert "python -m benchmarks --quick --only accelerators" in text
    assert "## Machine" in text and "onnxruntime" in text and "opencv" in text


def test_cli_rejects_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--only", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_markdown_lists_failures_and_checks() -> None:
    ok = Section("a", "A", ["x"], rows=[[1]])
    bad = Section("b", "B", [], error="RuntimeError: boom")
    text = markdown([ok, bad], {"cpu": "test"}, "python -m benchmarks", quick=False)
    assert "| b ran | FAIL | RuntimeError: boom |" in text
    assert "| x |" in text and "| 1 |" in text


def test_proc_readings_of_this_process() -> None:
    import os

    assert proc_cpu_s(os.getpid()) > 0
    assert proc_rss_mb(os.getpid()) > 1


# -- the hot-path fix the pipeline benchmark led to: an unpaced replay waits instead of dropping
# (the queue itself: tests/test_capture.py)


@pytest.mark.parametrize(("realtime", "blocks"), [(False, True), (True, False)])
def test_agent_blocks_only_for_an_unpaced_replay(tmp_path: Path, realtime: bool, blocks: bool) -> None:
    from edge_agent.agent import Agent
    from edge_agent.runtime import ModelRunner
    from edge_agent.spool import Spool
    from models.synthetic import make_bundle
    from tests.agent_fakes import ListSource, SpoolDrainingPublisher, agent_config, images

    config = agent_config(tmp_path / "state", **{"source.realtime": realtime, "source.queue_size": 1})
    spool = Spool(config.state_dir / "spool")
    bundle = make_bundle(tmp_path / "b")
    agent = Agent(
        config, ListSource(images(3)), SpoolDrainingPublisher(spool), ModelRunner.load(bundle), spool=spool
    )
    assert agent.frames.block_when_full is blocks
    if not realtime:
        agent.start()
        try:
            wait_until(lambda: agent.frames_total >= 3, 20, what="the agent decided the 3 frames")
        finally:
            agent.stop()
        assert agent.frames_total == 3 and agent.frames.dropped_total == 0


def test_providers_compare_every_peer_at_both_precisions(ctx: Context) -> None:
    s = BENCHMARKS["providers"](ctx)
    assert s.error is None
    peers = {"ORT CPU provider", "ORT OpenVINO provider", "OpenVINO runtime", "cv2.dnn"}
    for precision in ("FP32", "INT8"):
        rows = [r for r in s.rows if r[1] == precision]
        assert {r[0] for r in rows} == peers  # measured, or a row saying why not
        cpu = next(r for r in rows if r[0] == "ORT CPU provider")
        assert int(cpu[2]) > 0 and cpu[6] == "1.00"


def test_camera_rate_puts_the_agent_beside_the_minimal_loop_at_30_fps(ctx: Context) -> None:
    s = BENCHMARKS["camerarate"](ctx)
    assert s.error is None
    assert [r[0] for r in s.rows] == [
        "agent (full-colour decode)",
        "agent, validated grey decode at 1/4 scale",
        "minimal loop (full-colour decode)",
        "minimal loop, grey decode at 1/4 scale",
    ]
    assert all(int(r[2]) > 0 for r in s.rows) and s.rows[2][4] == "1.00"
    assert [c.name for c in s.checks] == [
        "agent at 30 fps <= 0.7x the minimal loop's CPU at the same rate",
        "accuracy on held-out frames unchanged by the reduced decode",
    ]
