"""6. Start-up and memory: ``edge-agent run`` as a real process, cold start to first decision.

The peer is the minimal loop as its own process (import onnxruntime and OpenCV, load the model,
decode one frame, decide). The agent's first decision is seen on its MQTT ``decisions`` topic
(a real Mosquitto), so the figure includes connecting, publishing state and the first frame.
Resident memory is read from /proc after the agent has served for a while (VmRSS, VmHWM).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.common import Check, Context, Section, fmt, proc_peak_rss_mb, proc_rss_mb
from benchmarks.services import start_mosquitto
from edge_agent.messages import DEFAULT_TOPIC_ROOT, Topics
from sim.procs import ProcessGroup
from sim.rig import edge_agent_run_argv, write_agent_config

MINIMAL = """
import sys, time, resource
t0 = float(sys.argv[3])
import numpy as np, onnxruntime as ort
from edge_agent.manifest import parse_manifest
from edge_agent.preprocess import Preprocessor
from edge_agent.recording_source import RecordingSource
b = sys.argv[1]
m = parse_manifest(open(b + '/manifest.json', 'rb').read())
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(b + '/model.onnx', sess_options=so, providers=['CPUExecutionProvider'])
pre = Preprocessor(m.input)
src = RecordingSource(sys.argv[2], realtime=False)
f = src.read()
int(np.argmax(s.run([m.outputs.class_output], {m.input.name: pre(f.image)})[0]))
t = time.time() - t0
for _ in range(200):
    g = src.read() or f
    s.run([m.outputs.class_output], {m.input.name: pre(g.image)})
rss = open('/proc/self/status').read().split('VmRSS:')[1].split()[0]
print(t, int(rss) / 1024)
"""


def minimal_cold_start(bundle: Path, recording: Path) -> tuple[float, float]:
    """(seconds to first decision, RSS MiB after 200 frames) of the minimal loop as a process."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", MINIMAL, str(bundle), str(recording), repr(t0)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    first, rss = out.stdout.split()
    return float(first), float(rss)


def agent_cold_start(
    bundle: Path, recording: Path, broker: str, workdir: Path, serve_s: float, group: ProcessGroup
) -> dict[str, float]:
    """Start ``edge-agent run``; time to its first decision on MQTT; RSS after ``serve_s`` of serving."""
    device = f"bench-{int(time.time() * 1000) % 10**9}"
    state = workdir / device
    state.mkdir(parents=True)
    config = write_agent_config(
        workdir / f"{device}.toml",
        device_id=device,
        state_dir=state,
        bundle=bundle,
        source={"uri": recording, "realtime": True, "loop": True},
        broker={"url": broker},
        telemetry={"window_s": 1.0},
    )
    first = threading.Event()
    host, port = broker.removeprefix("mqtt://").split(":")
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{device}")
    subscribed = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        c.subscribe(Topics(DEFAULT_TOPIC_ROOT).device(device, "decisions"), 0)

    def on_subscribe(c: mqtt.Client, u: Any, mid: Any, rcs: Any, p: Any = None) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, u: Any, msg: Any) -> None:
        first.set()

    sub.on_connect = on_connect
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.connect(host, int(port))
    sub.loop_start()
    try:
        if not subscribed.wait(10):  # SUBACK before the agent starts: its first decision is not missed
            raise RuntimeError("cannot subscribe to the benchmark broker")
        t0 = time.monotonic()
        child = group.start(device, edge_agent_run_argv(config))
        if not first.wait(120):
            raise RuntimeError(f"no decision from edge-agent in 120 s:\n{child.log_tail()}")
        t_first = time.monotonic() - t0
        time.sleep(serve_s)
        rss, peak = proc_rss_mb(child.pid), proc_peak_rss_mb(child.pid)
        child.stop()
    finally:
        sub.loop_stop()
        sub.disconnect()
    return {"first_s": t_first, "rss_mb": rss, "peak_mb": peak}


def run(ctx: Context) -> Section:
    section = Section(
        "startup",
        "Start-up and memory (edge-agent run as a process)",
        ["peer", "cold start → first decision s", "RSS MiB (serving)", "peak RSS MiB"],
    )
    b = ctx.bundles()
    recording = ctx.recording(ctx.scale(40, 1500))
    reps = ctx.scale(1, 3)
    with (
        tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="startup-") as tmp,
        ProcessGroup(Path(tmp) / "logs") as group,
    ):
        _, broker = start_mosquitto(group, Path(tmp) / "mosquitto")
        agents = [
            agent_cold_start(b.v1, recording, broker, Path(tmp), ctx.scale(1, 5), group) for _ in range(reps)
        ]
        minimals = [minimal_cold_start(b.v1, recording) for _ in range(reps)]
    a_first = statistics.median(a["first_s"] for a in agents)
    a_rss = statistics.median(a["rss_mb"] for a in agents)
    m_first = statistics.median(m[0] for m in minimals)
    m_rss = statistics.median(m[1] for m in minimals)
    section.rows += [
        ["edge-agent run", fmt(a_first), fmt(a_rss, 1), fmt(max(a["peak_mb"] for a in agents), 1)],
        ["minimal loop process", fmt(m_first), fmt(m_rss, 1), "-"],
        ["agent / minimal", fmt(a_first / m_first), fmt(a_rss / m_rss), "-"],
    ]
    section.notes.append(
        f"Median of {reps} cold starts ({b.kind} bundle {b.v1.name}, 30 fps recording, real Mosquitto). "
        "Agent start-up includes Python imports, config validation, model load + warm-up, MQTT connect "
        "and the first frame; the minimal process imports, loads and decides one frame."
    )
    section.checks.append(Check("cold start and RSS reported", True, f"{a_first:.2f} s, {a_rss:.0f} MiB"))
    return section
