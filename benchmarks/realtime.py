"""2. Real time at camera rate: the agent fed at 30 and 60 fps from a recording (CPU provider).

The recording is replayed with ``RecordingSource(realtime=True, fps=...)``: frame ``i`` is due
``i / fps`` after the first, like a camera. Frame-to-decision latency runs from when the frame
was due (so it includes JPEG decoding, the queue and inference) to the decision callback.
Dropped frames are the agent's own count (its drop-oldest queue). One intra-op thread, no
spinning: the daemon's defaults.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import RELEASES, Check, Context, Section, fmt, pct
from benchmarks.harness import AgentRun


def run_at(ctx: Context, fps: float, duration_s: float, bundle: Path | None = None) -> list[Any]:
    """One row: the agent at ``fps`` for ``duration_s`` (on ``bundle``, default v1)."""
    frames = max(2, int(fps * duration_s))
    recording = ctx.recording(max(frames, ctx.scale(40, 1500)))
    with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="rt-") as tmp:
        run = AgentRun(recording, Path(tmp), bundle or ctx.bundles().v1, threads=1, fps=fps)
        m = run.measure(frames, duration_s)
        dropped = run.dropped
        run.stop()
        run.runner.close()
    cpu, wall, decided, lat = m.cpu_s, m.wall_s, m.decided, m.latencies_ms
    return [
        f"{fps:g}",
        decided,
        dropped,
        fmt(pct(lat, 50), 2),
        fmt(pct(lat, 99), 2),
        fmt(float(np.max(lat)) if lat else float("nan"), 2),
        fmt(100 * cpu / wall, 1),
        fmt(1000 * cpu / max(1, decided), 3),
    ]


def run(ctx: Context) -> Section:
    section = Section(
        "realtime",
        "Real time at camera rate (CPU provider, 1 thread)",
        [
            "fps",
            "frames decided",
            "dropped",
            "frame→decision p50 ms",
            "p99 ms",
            "max ms",
            "CPU % of a core",
            "CPU ms/frame",
        ],
    )
    duration = ctx.scale(1, 20)
    for fps in (30.0, 60.0):
        row = run_at(ctx, fps, duration)
        section.rows.append(row)
        if fps == 30.0:
            section.checks.append(
                Check("0 frames dropped at 30 fps", row[2] == 0, f"{row[2]} dropped of {row[1] + row[2]}")
            )
    section.notes.append(
        f"{duration} s per rate; in-process Agent with RecordingSource(realtime=True, fps=N) and a null "
        "publisher. Latency is measured from the frame's due time (camera schedule) to the decision."
    )
    return section


def _minimal_at(
    ctx: Context, fps: float, duration_s: float, bundle: Path, *, reduced: bool
) -> tuple[float, int]:
    """The minimal loop paced like a camera: (CPU % of a core, frames). Decode, preprocess, run,
    argmax, publish one JSON message per frame (to a null publisher), then sleep until the next
    frame is due. ``reduced``: greyscale decode at 1/4 scale (libjpeg DCT scaling) instead of full
    colour -- what a model that needs small grey input could be fed (not the agent's path yet)."""
    from benchmarks.harness import NullPublisher
    from benchmarks.pipeline import CPU, _frames, _session
    from edge_agent.manifest import parse_manifest
    from edge_agent.preprocess import Preprocessor

    manifest = parse_manifest((bundle / "manifest.json").read_bytes())
    pre = Preprocessor(manifest.input)
    sess = _session(bundle, 1, CPU)
    in_name, out_name = manifest.input.name, manifest.outputs.class_output
    frames = max(2, int(fps * duration_s))
    reader, n = _frames(ctx.recording(max(frames, ctx.scale(40, 1500))))
    flag = cv2.IMREAD_REDUCED_GRAYSCALE_4 if reduced else cv2.IMREAD_COLOR
    publisher = NullPublisher()

    def decode(i: int) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(reader.read_bytes(i % n), np.uint8), flag)
        # The manifest's preprocessing takes a 3-channel frame; a grey one is widened for it
        # (cheap at 1/16 of the pixels; a reduced-decode path in the agent would skip this).
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image

    sess.run([out_name], {in_name: pre(decode(0))})
    c0, t0 = time.process_time(), time.monotonic()
    for i in range(frames):
        due = t0 + i / fps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        (scores,) = sess.run([out_name], {in_name: pre(decode(i))})
        k = int(np.argmax(scores))
        publisher.publish_decision(json.dumps({"frame": i, "label": k, "at": time.time()}).encode())
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    reader.close()
    return 100 * cpu / wall, frames


def _validated_grey_bundle(ctx: Context, src: Path) -> tuple[Path, dict[str, float]]:
    """v1 declaring the 1/4-scale grey decode, and its held-out accuracy through both decode paths."""
    import json
    import shutil

    from models.bundle import load_bundle
    from models.data import rendered_frames
    from models.evaluate import evaluate_bundle

    out = ctx.workdir / f"{src.name}-grey4"
    if not out.exists():
        shutil.copytree(src, out)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["input"]["validated_decodes"] = ["gray_reduced_4"]
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    bundle = load_bundle(out)
    frames = list(rendered_frames(bundle.manifest.labels, 9000, ctx.scale(24, 600)))
    acc = {
        d: float(evaluate_bundle(bundle, frames, decode=d)["accuracy"]) for d in ("color", "gray_reduced_4")
    }
    return out, {**acc, "frames": float(len(frames))}


def _thread_ticks() -> dict[int, tuple[float, int]]:
    """Per thread of this process: (CPU seconds, voluntary + involuntary context switches)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[float, int]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:  # the thread ended
            continue
        switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
        out[int(task.name)] = ((int(fields[11]) + int(fields[12])) / tick, switches)
    return out


def agent_thread_profile(
    ctx: Context, bundle: Path, fps: float, duration_s: float
) -> dict[str, tuple[float, float]]:
    """Where the agent's CPU goes at camera rate: per thread, (CPU ms per frame, wake-ups per frame).

    From /proc/self/task (the kernel's own accounting, no profiler overhead); threads are named by
    ``threading`` (capture, inference, telemetry, ...)."""
    frames = max(2, int(fps * duration_s))
    recording = ctx.recording(max(frames, ctx.scale(40, 1500)))
    with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="prof-") as tmp:
        run = AgentRun(recording, Path(tmp), bundle, threads=1, fps=fps)
        run.start()
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        before = _thread_ticks()
        target = len(run.decisions) + frames
        deadline = time.monotonic() + duration_s * 3 + 10
        while len(run.decisions) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        after = _thread_ticks()
        decided = max(1, len(run.decisions) - (target - frames))
        run.stop()
        run.runner.close()
    out: dict[str, tuple[float, float]] = {}
    for tid, (cpu, sw) in after.items():
        name = names.get(tid, "main/other" if tid not in names else str(tid))
        cpu0, sw0 = before.get(tid, (0.0, 0))
        prev = out.get(name, (0.0, 0.0))
        out[name] = (prev[0] + (cpu - cpu0) * 1000 / decided, prev[1] + (sw - sw0) / decided)
    return out


def _decode_costs(ctx: Context, bundle: Path) -> dict[str, float]:
    """Median ms per frame: full-colour vs reduced grey decode, and preprocessing after each."""
    from benchmarks.pipeline import _frames
    from edge_agent.manifest import parse_manifest
    from edge_agent.preprocess import Preprocessor

    pre = Preprocessor(parse_manifest((bundle / "manifest.json").read_bytes()).input)
    reader, n = _frames(ctx.recording(ctx.scale(40, 1500)))
    blobs = [np.frombuffer(reader.read_bytes(i), np.uint8) for i in range(min(n, ctx.scale(20, 300)))]
    reader.close()
    perf = time.perf_counter
    out: dict[str, list[float]] = {"color": [], "reduced": [], "pre_color": [], "pre_reduced": []}
    for blob in blobs:
        for key, flag in (("color", cv2.IMREAD_COLOR), ("reduced", cv2.IMREAD_REDUCED_GRAYSCALE_4)):
            t = perf()
            image = cv2.imdecode(blob, flag)
            out[key].append((perf() - t) * 1000)
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            t = perf()
            pre(image)
            out[f"pre_{key}"].append((perf() - t) * 1000)
    return {k: float(np.median(v)) for k, v in out.items()}


def run_camera_rate(ctx: Context) -> Section:
    """The agent and the minimal loop at the same camera rate, in interleaved blocks (item 6)."""
    section = Section(
        "camerarate",
        "CPU at camera rate: the agent against the minimal loop at the same 30 fps",
        ["peer", "blocks", "frames", "CPU % of a core (median block)", "vs minimal loop"],
    )
    fps, duration, blocks = 30.0, float(ctx.scale(1, 8)), ctx.scale(1, 3)
    # The released GRAY model in quick mode too: the reduced decode needs a model validated with it.
    v1 = RELEASES / "shapes-1.0.0"
    grey, accuracy = _validated_grey_bundle(ctx, v1)
    agent_pct: list[float] = []
    agent_grey_pct: list[float] = []
    minimal_pct: list[float] = []
    reduced_pct: list[float] = []
    frames = {"agent": 0, "agent_grey": 0, "minimal": 0, "reduced": 0}
    for _ in range(blocks):
        row = run_at(ctx, fps, duration, v1)
        agent_pct.append(float(row[6]))
        frames["agent"] += int(row[1])
        row = run_at(ctx, fps, duration, grey)
        agent_grey_pct.append(float(row[6]))
        frames["agent_grey"] += int(row[1])
        p, f = _minimal_at(ctx, fps, duration, v1, reduced=False)
        minimal_pct.append(p)
        frames["minimal"] += f
        p, f = _minimal_at(ctx, fps, duration, v1, reduced=True)
        reduced_pct.append(p)
        frames["reduced"] += f
    decode_ms = _decode_costs(ctx, v1)
    profile = agent_thread_profile(ctx, grey, fps, duration)
    base = float(np.median(minimal_pct))
    for name, key, values in (
        ("agent (full-colour decode)", "agent", agent_pct),
        ("agent, validated grey decode at 1/4 scale", "agent_grey", agent_grey_pct),
        ("minimal loop (full-colour decode)", "minimal", minimal_pct),
        ("minimal loop, grey decode at 1/4 scale", "reduced", reduced_pct),
    ):
        med = float(np.median(values))
        section.rows.append([name, blocks, frames[key], fmt(med, 1), fmt(med / base, 2)])
    ratio = float(np.median(agent_grey_pct)) / base
    section.checks.append(
        Check(
            "agent at 30 fps <= 0.7x the minimal loop's CPU at the same rate",
            bool(ratio <= 0.7),
            f"{ratio:.2f}x ({np.median(agent_grey_pct):.1f} % vs {base:.1f} % of a core; full-colour decode "
            f"{float(np.median(agent_pct)) / base:.2f}x)",
        )
    )
    section.checks.append(
        Check(
            "accuracy on held-out frames unchanged by the reduced decode",
            bool(accuracy["gray_reduced_4"] >= accuracy["color"]),
            f"{accuracy['gray_reduced_4']:.4f} vs {accuracy['color']:.4f} (full colour)",
        )
    )
    section.notes.append(
        f"'validated grey decode': {v1.name} with input.validated_decodes = "
        f'["gray_reduced_4"]; held-out accuracy through each path (`edge-models evaluate --decode`, '
        f"{accuracy['frames']:.0f} rendered frames, seed 9000): {accuracy['color']:.4f} full colour, "
        f"{accuracy['gray_reduced_4']:.4f} grey at 1/4 scale."
    )
    busy = sorted(profile.items(), key=lambda kv: -kv[1][0])
    section.notes.append(
        "Where the agent's CPU goes at 30 fps (validated grey decode; per thread from /proc/self/task, "
        "CPU ms per frame / wake-ups per frame; 10 ms clock ticks, so read tenths): "
        + "; ".join(f"{name} {ms:.2f} ms / {sw:.1f}" for name, (ms, sw) in busy if ms > 0 or sw > 0.05)
        + "."
    )
    section.notes.append(
        "Decode alone, same frames, same run (median ms per 640x480 frame): full colour "
        f"{decode_ms['color']:.2f}, greyscale at 1/4 scale {decode_ms['reduced']:.2f}; then preprocessing "
        f"(crop, INTER_AREA resize, normalise): {decode_ms['pre_color']:.2f} from the full frame, "
        f"{decode_ms['pre_reduced']:.2f} from the reduced one."
    )
    section.notes.append(
        f"{blocks} blocks of {duration:g} s per peer, interleaved (agent, agent reduced, minimal, minimal reduced) so the "
        "shared machine's background falls on all alike; CPU is the process's CPU time over the block's "
        "wall time. The agent is in process (RecordingSource(realtime=True), null publisher, 1 s "
        "telemetry windows); the minimal loops sleep until each frame is due, as a camera would pace them."
    )
    return section
