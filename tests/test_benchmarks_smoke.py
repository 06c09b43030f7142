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


def test_swap_adopts_the_new_model(ctx: Context) -> None:
    s = BENCHMARKS["swap"](ctx)
    assert len(s.rows) == 2
    assert all(int(r[1]) > 0 for r in s.rows)
    assert len(s.checks) == 2


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


needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


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
