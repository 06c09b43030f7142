"""8. Frame → local output: how late a decision reaches a program on the robot, at 30 fps.

The agent replays a recording at 30 fps in-process (as ``realtime``) with the local outputs on:
the Unix socket (newline-delimited JSON) read by a client thread, and — when the ``opcua`` extra
is installed — the OPC UA server with a subscribed asyncua client receiving one event per
decision. Latency runs from when the frame was due (camera schedule) to when the client has the
decision; the plain decision callback's latency is the baseline in the same run.
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Check, Context, Section, fmt, pct
from benchmarks.harness import AgentRun
from edge_agent.local_output import LocalSocketOutput
from sim.procs import free_port


class _SocketClient:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(0.5)
        self.at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self.at[json.loads(line)["frame_id"]] = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class _OpcUaClient:
    """An asyncua client on its own thread, subscribed to the result events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.at: dict[int, float] = {}
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    async def _main(self) -> None:
        from asyncua import Client

        at = self.at

        class Handler:
            def event_notification(self, event: Any) -> None:
                at[int(event.FrameId)] = time.monotonic()

        async with Client(self.url) as client:
            idx = await client.get_namespace_index("urn:lineside:vision")
            obj = await client.nodes.objects.get_child([f"{idx}:Lineside"])
            etype = await client.nodes.base_event_type.get_child([f"{idx}:LinesideResultEventType"])
            sub = await client.create_subscription(10, Handler())
            await sub.subscribe_events(obj, etype, queuesize=1000)
            self.ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run(ctx: Context) -> Section:
    section = Section(
        "local_output",
        "Frame → local output at 30 fps (CPU provider, 1 thread)",
        ["output", "decisions received", "of decided", "frame→client p50 ms", "p99 ms", "max ms"],
    )
    fps = 30.0
    duration = ctx.scale(1, 20)
    frames = int(fps * duration)
    recording = ctx.recording(max(frames, ctx.scale(40, 1500)))
    try:
        import asyncua  # noqa: F401

        have_opcua = True
    except ImportError:
        have_opcua = False
    with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="lo-") as tmp:
        run_ = AgentRun(recording, Path(tmp) / "state", ctx.bundles().v1, threads=1, fps=fps)
        out = LocalSocketOutput(Path(tmp) / "d.sock")
        out.start()
        run_.agent.outputs.append(out)
        opc = None
        opc_client = None
        if have_opcua:
            from edge_agent.config import OpcUaConfig
            from edge_agent.opcua_server import OpcUaOutput

            url = f"opc.tcp://127.0.0.1:{free_port()}/lineside/"
            opc = OpcUaOutput(
                OpcUaConfig(enabled=True, endpoint=url, allow_anonymous=True, security_policies=["None"]),
                lambda: {},
            )
            opc.start()
            run_.agent.outputs.append(opc)
            opc_client = _OpcUaClient(url)
            opc_client.ready.wait(20)
        client = _SocketClient(out.path)
        run_.start()
        deadline = time.monotonic() + duration * 3 + 10
        while len(run_.decisions) + run_.dropped < frames and time.monotonic() < deadline:
            time.sleep(0.02)
        settle = time.monotonic() + 2.0  # let the last decisions arrive (polling with a deadline)
        while time.monotonic() < settle and len(client.at) < len(run_.decisions):
            time.sleep(0.02)
        run_.stop()
        due = run_.source.due
        decided = dict(zip(run_.decisions.frame_ids, run_.decisions.at, strict=True))
        rows: list[tuple[str, dict[int, float]]] = [
            ("decision callback (baseline)", decided),
            ("unix socket", client.at),
        ]
        if opc_client is not None:
            settle = time.monotonic() + 2.0
            while time.monotonic() < settle and len(opc_client.at) < len(decided):
                time.sleep(0.02)
            rows.append(("OPC UA result events", dict(opc_client.at)))
        client.stop()
        out.stop()
        if opc_client is not None:
            opc_client.stop()
        if opc is not None:
            opc.stop()
        run_.runner.close()
    for name, at in rows:
        lat = [(t - due[i]) * 1000 for i, t in at.items() if i in due and i in decided]
        section.rows.append(
            [
                name,
                len(lat),
                len(decided),
                fmt(pct(lat, 50), 2),
                fmt(pct(lat, 99), 2),
                fmt(max(lat) if lat else float("nan"), 2),
            ]
        )
        if name != "decision callback (baseline)":
            section.checks.append(
                Check(
                    f"{name}: every decision received",
                    len(lat) == len(decided),
                    f"{len(lat)} of {len(decided)}",
                )
            )
    if not have_opcua:
        section.notes.append("OPC UA not measured: the 'opcua' extra (asyncua) is not installed.")
    section.notes.append(
        f"{duration} s at 30 fps; in-process Agent (RecordingSource realtime), null publisher: the plant "
        "broker plays no part. Latency from the frame's due time to the client holding the decision."
    )
    return section
