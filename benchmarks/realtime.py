"""2. Real time at camera rate: the agent fed at 30 and 60 fps from a recording (CPU provider).

The recording is replayed with ``RecordingSource(realtime=True, fps=...)``: frame ``i`` is due
``i / fps`` after the first, like a camera. Frame-to-decision latency runs from when the frame
was due (so it includes JPEG decoding, the queue and inference) to the decision callback.
Dropped frames are the agent's own count (its drop-oldest queue). One intra-op thread, no
spinning: the daemon's defaults.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Check, Context, Section, fmt, pct
from benchmarks.harness import AgentRun


def run_at(ctx: Context, fps: float, duration_s: float) -> list[Any]:
    """One row: the agent at ``fps`` for ``duration_s``."""
    frames = max(2, int(fps * duration_s))
    recording = ctx.recording(max(frames, ctx.scale(40, 1500)))
    with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="rt-") as tmp:
        run = AgentRun(recording, Path(tmp), ctx.bundles().v1, threads=1, fps=fps)
        c0 = time.process_time()
        run.start()
        deadline = time.monotonic() + duration_s * 3 + 10
        while len(run.decisions) + run.dropped < frames and time.monotonic() < deadline:
            time.sleep(0.02)
        cpu = time.process_time() - c0
        wall = time.monotonic() - run.started_at
        dropped = run.dropped
        ids = run.decisions.frame_ids[:frames]
        at = run.decisions.at[:frames]
        lat = [(t - run.source.due[i]) * 1000 for i, t in zip(ids, at, strict=True)]
        run.stop()
        run.runner.close()
    decided = len(ids)
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
