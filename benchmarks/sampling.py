"""Sampling on the serving path: the agent at 30 fps with capture off, on, and on for every frame.

The same in-process agent and recording as ``realtime``; the only difference between rows is
``[samples]``. "off" is ``capture = false`` (no sampler at all). "default" is the shipped policy
(the low-confidence band, 6/min, 60/h). "every frame" samples all frames (random share 1.0, no
effective quota): the worst case, a JPEG encode and two durable writes per frame on the worker.
CPU is the whole process (so it includes the worker); latency is frame due → decision, i.e. what
the line sees. No timing is asserted: the point is the comparison in one run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context, Section, fmt, pct
from benchmarks.harness import AgentRun
from edge_agent.config import SamplesConfig
from edge_agent.sampling import attach_to_agent

MODES: dict[str, dict[str, Any]] = {
    "off": {"capture": False},
    "default": {},
    "every frame": {"random_share": 1.0, "per_minute": 1_000_000, "per_hour": 10**8, "per_day": 10**9},
}


def run_mode(ctx: Context, mode: str, fps: float, duration_s: float) -> list[Any]:
    """One row: the agent at ``fps`` for ``duration_s`` with sampling ``mode``."""
    frames = max(2, int(fps * duration_s))
    recording = ctx.recording(max(frames, ctx.scale(40, 1500)))
    with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="smp-") as tmp:
        run = AgentRun(recording, Path(tmp), ctx.bundles().v1, threads=1, fps=fps)
        # Port 9 (discard) on loopback: refused at once; the uploader backs off (up to 60 s) and
        # the samples stay in the ring, so the rows measure sampling, not the network.
        samples = SamplesConfig(server_url="http://127.0.0.1:9", **MODES[mode])
        run.agent.config = run.config.model_copy(update={"samples": samples})
        sampler = attach_to_agent(run.agent)
        m = run.measure(frames, duration_s)
        cpu, wall, lat = m.cpu_s, m.wall_s, m.latencies_ms
        dropped = run.dropped
        run.stop()
        run.runner.close()
        counters = sampler.counters() if sampler is not None else {}
    return [
        mode,
        m.decided,
        dropped,
        counters.get("stored", 0),
        counters.get("dropped", 0),
        fmt(pct(lat, 50), 2),
        fmt(pct(lat, 99), 2),
        fmt(float(np.max(lat)) if lat else float("nan"), 2),
        fmt(100 * cpu / wall, 1),
    ]


def run(ctx: Context) -> Section:
    section = Section(
        "sampling",
        "Sampling on the serving path at 30 fps (CPU provider, 1 thread)",
        [
            "capture",
            "frames decided",
            "frames dropped",
            "samples stored",
            "samples dropped (queue full)",
            "frame→decision p50 ms",
            "p99 ms",
            "max ms",
            "CPU % of a core",
        ],
    )
    duration = ctx.scale(1, 20)
    for mode in MODES:
        section.rows.append(run_mode(ctx, mode, 30.0, duration))
    section.notes.append(
        f"{duration} s per mode, 640x480 frames; samples are JPEG q85 at most 640 px, written to a ring "
        "on the local disk; the upload target refuses connections, so the uploader only backs off."
    )
    return section
