"""The real agent, in process: ``Agent`` with a real ``RecordingSource`` and a publisher that
goes nowhere, so the figures are the agent's own frame path (capture thread, drop-oldest
queue, inference thread, telemetry thread, spool) without a broker's noise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.agent import Agent, Decision
from edge_agent.config import AgentConfig, BrokerConfig, InferenceConfig, SourceConfig, TelemetryConfig
from edge_agent.frames import Frame
from edge_agent.publisher import CommandSink
from edge_agent.recording_source import RecordingSource
from edge_agent.runtime import ModelRunner
from edge_agent.spool import Spool


class NullPublisher:
    """A Publisher with no broker behind it: counts what it is given, sends nothing."""

    connected = False

    def __init__(self) -> None:
        self.decisions = 0
        self.notifies = 0

    def start(self, on_command: CommandSink) -> None:
        pass

    def notify(self) -> None:
        self.notifies += 1

    def publish_state(self, payload: bytes) -> None:
        pass

    def publish_decision(self, payload: bytes) -> None:
        self.decisions += 1

    def stop(self, flush_timeout: float) -> None:
        pass


class ScheduledSource:
    """A RecordingSource that remembers when each frame was due (for frame-to-decision latency).

    Realtime: frame ``i`` is due ``i / fps`` after the first read, as the camera would send it;
    as fast as possible: when ``read`` was called. Delegates everything else.
    """

    def __init__(self, inner: RecordingSource, fps: float | None) -> None:
        self.inner = inner
        self._fps = fps
        self._t0: float | None = None
        self._n = 0
        self.due: dict[int, float] = {}

    @property
    def fps(self) -> float | None:
        return self.inner.fps

    @property
    def description(self) -> str:
        return self.inner.description

    def read(self) -> Frame | None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        frame = self.inner.read()
        if frame is not None:
            self.due[frame.index] = self._t0 + self._n / self._fps if self._fps else now
            self._n += 1
        return frame

    def set_decode(self, decode: str) -> None:
        """The agent picks the decode its model was validated with (edge_agent.decode)."""
        self.inner.set_decode(decode)

    @property
    def decode(self) -> str:
        return self.inner.decode

    def reopen(self) -> None:
        self.inner.reopen()

    def close(self) -> None:
        self.inner.close()


class Decisions:
    """The ``on_decision`` callback: decision times, the agent's per-frame latency, frame ids."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.latency_ms: list[float] = []
        self.frame_ids: list[int] = []
        self.models: list[str] = []
        self.on: Callable[[Decision], None] | None = None

    def __call__(self, d: Decision) -> None:
        self.at.append(time.monotonic())
        self.latency_ms.append(d.latency_ms)
        self.frame_ids.append(d.frame_id)

    def __len__(self) -> int:
        return len(self.at)


def agent_config(
    recording: Path,
    state_dir: Path,
    bundle: Path,
    *,
    threads: int,
    realtime: bool,
    providers: list[str] | None = None,
    queue_size: int = 4,
    cpu_affinity: list[int] | None = None,
) -> AgentConfig:
    """The config ``edge-agent run`` would build for this replay (offline broker, 1 s windows)."""
    return AgentConfig(
        device_id="bench",
        state_dir=state_dir,
        bundle=bundle,
        source=SourceConfig(uri=str(recording), realtime=realtime, queue_size=queue_size),
        broker=BrokerConfig(url=None),
        telemetry=TelemetryConfig(window_s=1.0),
        inference=InferenceConfig(
            intra_op_num_threads=threads, providers=providers, cpu_affinity=cpu_affinity
        ),
    )


@dataclass(frozen=True)
class Measured:
    """What ``AgentRun.measure`` saw: CPU and wall seconds, frames decided, latencies in ms."""

    cpu_s: float
    wall_s: float
    decided: int
    latencies_ms: list[float]


class AgentRun:
    """One in-process agent over one recording; ``start()``, ``wait_done()``, ``stop()``."""

    def __init__(
        self,
        recording: Path,
        state_dir: Path,
        bundle: Path,
        *,
        threads: int = 1,
        fps: float | None = None,
        providers: list[str] | None = None,
        runner: ModelRunner | None = None,
        cpu_affinity: list[int] | None = None,
    ) -> None:
        realtime = fps is not None
        self.config = agent_config(
            recording,
            state_dir,
            bundle,
            threads=threads,
            realtime=realtime,
            providers=providers,
            cpu_affinity=cpu_affinity,
        )
        self.runner = runner or ModelRunner.load(bundle, inference=self.config.inference)
        inner = RecordingSource(recording, realtime=realtime, fps=fps)
        self.frames_total = len(inner)
        self.source = ScheduledSource(inner, fps)
        self.decisions = Decisions()
        self.publisher = NullPublisher()
        state_dir.mkdir(parents=True, exist_ok=True)
        self.agent = Agent(
            self.config,
            self.source,
            self.publisher,
            self.runner,
            spool=Spool(state_dir / "spool", max_messages=10_000),
            on_decision=self.decisions,
        )
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.agent.start()

    @property
    def dropped(self) -> int:
        return self.agent.frames.dropped_total

    def done(self) -> bool:
        """Every frame of the recording is decided or dropped."""
        return (
            self.agent.capture.state in ("ended", "stopped", "crashed")
            and len(self.decisions) + self.dropped + self.agent.errors_total >= self.agent.capture.frames_read
        )

    def wait_done(self, timeout_s: float) -> bool:
        """Poll (20 ms) until ``done()``; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        ev = threading.Event()
        while not self.done():
            if time.monotonic() > deadline:
                return False
            ev.wait(0.02)
        return True

    def measure(self, frames: int, duration_s: float) -> Measured:
        """Start, run until ``frames`` are decided or dropped (or 3x ``duration_s`` + 10 s pass), and
        return this process's CPU time, the wall time and each decided frame's latency after its due time."""
        c0 = time.process_time()
        self.start()
        deadline = time.monotonic() + duration_s * 3 + 10
        while len(self.decisions) + self.dropped < frames and time.monotonic() < deadline:
            time.sleep(0.02)
        cpu = time.process_time() - c0
        wall = time.monotonic() - self.started_at
        ids = self.decisions.frame_ids[:frames]
        at = self.decisions.at[:frames]
        lat = [(t - self.source.due[i]) * 1000 for i, t in zip(ids, at, strict=True)]
        return Measured(cpu, wall, len(ids), lat)

    def stop(self) -> None:
        self.agent.stop()
