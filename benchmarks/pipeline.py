"""1. Pipeline throughput and latency (and 7. the same on CUDA/TensorRT when there is a GPU).

Peers, all on the same recording, same bundle, same ONNX Runtime session options:

- **agent**: the real agent loop in process (capture thread → drop-oldest queue → inference
  thread → telemetry windows → spool), replaying the recording as fast as possible;
- **minimal loop**: one Python loop doing the same work (read+decode the JPEG, preprocess per
  the manifest, ``InferenceSession.run``, argmax): what a plant engineer would write instead;
- **bare run**: ``InferenceSession.run`` on tensors preprocessed beforehand (the compute limit);
- **cv2.dnn loop**: the minimal loop with OpenCV's DNN module running the same ONNX file;
- **OpenVINO loop**: the minimal loop on OpenVINO's runtime, when it is installed.

Throughput is frames decided per wall second; latency is per frame from preprocess to decision
(the agent's own ``latency_ms``); CPU per frame is process CPU time (all threads) / frames.
Each peer runs ``rounds`` times interleaved; the median round is reported.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from benchmarks.common import Check, Context, Section, fmt, pct
from benchmarks.harness import AgentRun
from edge_agent.config import InferenceConfig
from edge_agent.manifest import parse_manifest
from edge_agent.preprocess import Preprocessor
from edge_agent.recording_source import MjpegAviReader, read_meta
from edge_agent.runtime import provider_options, session_options

CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass
class Measure:
    """One peer's run: frames, wall seconds, CPU seconds, per-frame latencies (ms), drops."""

    peer: str
    threads: int
    frames: int
    wall_s: float
    cpu_s: float
    latency_ms: list[float]
    dropped: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1000 * self.cpu_s / self.frames if self.frames else float("nan")


def _frames(recording: Path) -> tuple[MjpegAviReader, int]:
    meta = read_meta(recording)
    reader = MjpegAviReader(recording / meta.video)
    return reader, len(reader)


def _session(bundle: Path, threads: int, provider: str) -> ort.InferenceSession:
    inference = InferenceConfig(intra_op_num_threads=threads, providers=[provider])
    providers: list[Any] = [(provider, provider_options(provider, inference))]
    if provider != CPU:
        providers.append(CPU)
    sess = ort.InferenceSession(
        (bundle / "model.onnx").read_bytes(), sess_options=session_options(inference), providers=providers
    )
    # ONNX Runtime drops a provider that fails to initialise and carries on with CPU: a figure
    # labelled CUDA or TensorRT must not be a CPU figure.
    serving = sess.get_providers()[0]
    if serving != provider:
        raise RuntimeError(f"{provider} did not initialise (ONNX Runtime chose {serving})")
    return sess


def run_agent(recording: Path, bundle: Path, threads: int, provider: str, workdir: Path) -> Measure:
    """The in-process agent over the whole recording, as fast as the source delivers."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="agent-") as tmp:
        run = AgentRun(recording, Path(tmp), bundle, threads=threads, providers=[provider])
        c0 = time.process_time()
        run.start()
        if not run.wait_done(timeout_s=600):
            run.stop()
            raise RuntimeError("the agent did not finish the recording in 600 s")
        cpu = time.process_time() - c0
        at = run.decisions.at
        wall = (at[-1] if at else time.monotonic()) - run.started_at
        m = Measure("agent", threads, len(at), wall, cpu, list(run.decisions.latency_ms), run.dropped)
        run.stop()
        run.runner.close()
    return m


def run_minimal(recording: Path, bundle: Path, threads: int, provider: str) -> Measure:
    """read+decode → preprocess → InferenceSession.run → argmax, in one loop."""
    manifest = parse_manifest((bundle / "manifest.json").read_bytes())
    pre = Preprocessor(manifest.input)
    sess = _session(bundle, threads, provider)
    in_name, out_name = manifest.input.name, manifest.outputs.class_output
    reader, n = _frames(recording)
    sess.run([out_name], {in_name: pre(reader.read(0))})  # warm-up
    lat: list[float] = []
    perf = time.perf_counter
    c0, t0 = time.process_time(), perf()
    for i in range(n):
        image = reader.read(i)
        t1 = perf()
        (scores,) = sess.run([out_name], {in_name: pre(image)})
        int(np.argmax(scores))
        lat.append((perf() - t1) * 1000)
    wall, cpu = perf() - t0, time.process_time() - c0
    reader.close()
    return Measure("minimal loop", threads, n, wall, cpu, lat)


def run_bare(recording: Path, bundle: Path, threads: int, provider: str) -> Measure:
    """InferenceSession.run alone on tensors preprocessed beforehand: the compute limit."""
    manifest = parse_manifest((bundle / "manifest.json").read_bytes())
    pre = Preprocessor(manifest.input)
    sess = _session(bundle, threads, provider)
    in_name, out_name = manifest.input.name, manifest.outputs.class_output
    reader, n = _frames(recording)
    tensors = [pre(reader.read(i)) for i in range(min(n, 64))]
    reader.close()
    sess.run([out_name], {in_name: tensors[0]})
    lat: list[float] = []
    perf = time.perf_counter
    c0, t0 = time.process_time(), perf()
    for i in range(n):
        t1 = perf()
        sess.run([out_name], {in_name: tensors[i % len(tensors)]})
        lat.append((perf() - t1) * 1000)
    wall, cpu = perf() - t0, time.process_time() - c0
    return Measure("bare InferenceSession.run", threads, n, wall, cpu, lat)


def run_cv2dnn(recording: Path, bundle: Path, threads: int) -> Measure:
    """The minimal loop on cv2.dnn (classic engine: OpenCV 5's new engine rejects QDQ models)."""
    manifest = parse_manifest((bundle / "manifest.json").read_bytes())
    pre = Preprocessor(manifest.input)
    path = str(bundle / "model.onnx")
    engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
    net = (
        cv2.dnn.readNetFromONNX(path, engine=engine) if engine is not None else cv2.dnn.readNetFromONNX(path)
    )
    names = list(net.getUnconnectedOutLayersNames())
    k = names.index(manifest.outputs.class_output) if manifest.outputs.class_output in names else 0
    reader, n = _frames(recording)
    old_threads = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        net.setInput(pre(reader.read(0)))
        net.forward(names)
        lat: list[float] = []
        perf = time.perf_counter
        c0, t0 = time.process_time(), perf()
        for i in range(n):
            image = reader.read(i)
            t1 = perf()
            net.setInput(pre(image))
            outs = net.forward(names)
            int(np.argmax(outs[k]))
            lat.append((perf() - t1) * 1000)
        wall, cpu = perf() - t0, time.process_time() - c0
    finally:
        cv2.setNumThreads(old_threads)
        reader.close()
    return Measure("cv2.dnn loop", threads, n, wall, cpu, lat)


def run_openvino(recording: Path, bundle: Path, threads: int) -> Measure | str:
    """The minimal loop on OpenVINO's runtime; a reason string when it is not installed."""
    try:
        import openvino as ov  # type: ignore[import-not-found,unused-ignore]  # optional peer
    except ImportError:
        return "not installed (pip install openvino to add this peer)"
    manifest = parse_manifest((bundle / "manifest.json").read_bytes())
    pre = Preprocessor(manifest.input)
    core = ov.Core()
    compiled = core.compile_model(
        str(bundle / "model.onnx"), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    )
    req = compiled.create_infer_request()
    out = compiled.output(manifest.outputs.class_output)
    reader, n = _frames(recording)
    req.infer({0: pre(reader.read(0))})
    lat: list[float] = []
    perf = time.perf_counter
    c0, t0 = time.process_time(), perf()
    for i in range(n):
        image = reader.read(i)
        t1 = perf()
        res = req.infer({0: pre(image)})
        int(np.argmax(res[out]))
        lat.append((perf() - t1) * 1000)
    wall, cpu = perf() - t0, time.process_time() - c0
    reader.close()
    return Measure("OpenVINO loop", threads, n, wall, cpu, lat)


def _median_round(rounds: list[Measure]) -> Measure:
    by_fps = sorted(rounds, key=lambda m: m.fps)
    return by_fps[len(by_fps) // 2]


COLUMNS = [
    "peer",
    "threads",
    "frames",
    "frames/s",
    "vs minimal",
    "p50 ms",
    "p99 ms",
    "CPU ms/frame",
    "CPU vs minimal",
    "dropped",
]


def measure_provider(
    ctx: Context,
    provider: str,
    section: Section,
    *,
    cv2_peers: bool,
    ratios: dict[int, tuple[float, float]] | None = None,
) -> dict[int, dict[str, Measure]]:
    """Run every peer for 1 and 2 threads on ``provider``; add rows to ``section``."""
    frames = ctx.scale(40, 1500)
    rounds = ctx.scale(1, 5)
    recording = ctx.recording(frames)
    bundle = ctx.bundles().v1
    results: dict[int, dict[str, Measure]] = {}
    ratios = ratios if ratios is not None else {}
    for threads in (1, 2):
        per_peer: dict[str, list[Measure]] = {}
        skipped: dict[str, str] = {}
        for _ in range(rounds):
            per_peer.setdefault("agent", []).append(
                run_agent(recording, bundle, threads, provider, ctx.workdir)
            )
            per_peer.setdefault("minimal", []).append(run_minimal(recording, bundle, threads, provider))
            per_peer.setdefault("bare", []).append(run_bare(recording, bundle, threads, provider))
            if cv2_peers:
                per_peer.setdefault("cv2", []).append(run_cv2dnn(recording, bundle, threads))
                ov = run_openvino(recording, bundle, threads)
                if isinstance(ov, str):
                    skipped["OpenVINO loop"] = ov
                else:
                    per_peer.setdefault("openvino", []).append(ov)
        med = {k: _median_round(v) for k, v in per_peer.items()}
        results[threads] = med
        # The acceptance ratios pair each agent round with the minimal loop run right after it, so a
        # neighbour's load that comes and goes between rounds moves both sides of a ratio alike.
        pairs = list(zip(per_peer["agent"], per_peer["minimal"], strict=True))
        ratios[threads] = (
            statistics.median(a.fps / m.fps for a, m in pairs),
            statistics.median(a.cpu_ms_per_frame / m.cpu_ms_per_frame for a, m in pairs),
        )
        base = med["minimal"]
        for m in med.values():
            section.rows.append(
                [
                    m.peer,
                    threads,
                    m.frames,
                    fmt(m.fps, 0),
                    fmt(m.fps / base.fps),
                    fmt(pct(m.latency_ms, 50), 3),
                    fmt(pct(m.latency_ms, 99), 3),
                    fmt(m.cpu_ms_per_frame, 3),
                    fmt(m.cpu_ms_per_frame / base.cpu_ms_per_frame),
                    m.dropped,
                ]
            )
        for peer, why in skipped.items():
            section.rows.append([peer, threads, "-", why, "-", "-", "-", "-", "-", "-"])
    return results


def run(ctx: Context) -> Section:
    """Benchmark 1 on the CPU provider."""
    section = Section("pipeline", "Pipeline throughput and latency (CPU provider)", COLUMNS)
    ratios: dict[int, tuple[float, float]] = {}
    measure_provider(ctx, CPU, section, cv2_peers=True, ratios=ratios)
    b = ctx.bundles()
    section.notes += [
        f"Bundle: {b.v1.name} ({b.kind}); recording: {ctx.scale(40, 1500)} frames 640x480 MJPG from the simulator; "
        f"median of {ctx.scale(1, 5)} interleaved rounds per peer.",
        "Agent = the real Agent class in process (capture thread + frame queue + inference thread + "
        "telemetry thread + spool) with a real RecordingSource(realtime=False) and a publisher that sends "
        "nothing. Its latency is its own per-frame latency_ms (preprocess → decision); CPU is the "
        "whole process's time.process_time() over the run (every thread).",
        "The agent decodes JPEGs on its capture thread while the inference thread preprocesses and runs "
        "the previous frame, so flat out it can beat the single-threaded minimal loop; an unpaced replay "
        "waits for room in the frame queue (a camera-rate source drops the oldest frame instead).",
        "Minimal and cv2.dnn loops include JPEG decoding in throughput and CPU, not in latency "
        "(latency = preprocess + inference + argmax), the same split as the agent's latency_ms.",
    ]
    for threads, (ratio, cpu_ratio) in ratios.items():
        plural = "s" if threads > 1 else ""
        section.checks.append(
            Check(f"agent/minimal throughput >= 0.9 ({threads} thread{plural})", ratio >= 0.9, f"{ratio:.2f}")
        )
        section.checks.append(
            Check(
                f"agent CPU/frame <= 1.2x minimal ({threads} thread{plural})",
                cpu_ratio <= 1.2,
                f"{cpu_ratio:.2f}x",
            )
        )
    section.notes.append(
        "Acceptance ratios: median over rounds of (agent round / the minimal-loop round run right after it); "
        "the table shows each peer's median round, so its 'vs minimal' column can differ a little."
    )
    return section


def _unavailable_row(provider: str, why: str) -> list[Any]:
    row: list[Any] = ["-"] * len(COLUMNS)
    row[0], row[3] = provider, f"not available ({why})"
    return row


def run_accelerators(ctx: Context) -> Section:
    """Benchmark 7: the pipeline benchmark on TensorRT/CUDA when onnxruntime-gpu and a GPU are present."""
    section = Section("accelerators", "Accelerators (CUDA / TensorRT execution providers)", COLUMNS)
    available = ort.get_available_providers()
    ran = False
    for provider in GPU_PROVIDERS:
        if provider not in available:
            section.rows.append(_unavailable_row(provider, "not in this onnxruntime build"))
            continue
        try:
            _session(ctx.bundles().v1, 1, provider)
        except Exception as exc:  # a GPU build without a GPU fails here: report, do not crash
            section.rows.append(_unavailable_row(provider, str(exc).splitlines()[0][:80]))
            continue
        sub = Section("", "", COLUMNS)
        measure_provider(ctx, provider, sub, cv2_peers=False)
        for row in sub.rows:
            row[0] = f"{row[0]} [{provider.removesuffix('ExecutionProvider')}]"
        section.rows += sub.rows
        ran = True
    if not ran:
        section.notes.append(
            "No GPU execution provider is available on this machine (onnxruntime "
            f"{ort.__version__}: {', '.join(available)}). On a GPU machine: "
            "`pip install onnxruntime-gpu` (replacing onnxruntime), then "
            "`python -m benchmarks --only accelerators` runs this same pipeline benchmark (agent, "
            "minimal loop, bare run; 1 and 2 threads) on TensorRT and CUDA."
        )
        section.checks.append(Check("accelerator figures", None, "no GPU here: not measured"))
    return section
