"""The agent: frames in, decisions out, telemetry and events to the fleet, commands from it.

Threads, and what each owns::

    capture      FrameSource.read → DropOldestQueue            (capture.py)
    inference    queue → ModelRunner.predict → TelemetryWindow (this module; the hot path)
                 → decisions (MQTT QoS 0 and/or a callback)
    telemetry    closed windows → Telemetry (seq, spool) → drift → listeners → status.json
    commands     cmd payloads → ping/pong, handlers             (commands.py)
    mqtt         spool → broker, state, cmd in, line state in   (publisher.py)
    local-output decisions → Unix socket clients               (local_output.py)
    opcua        decisions → OPC UA results and events          (opcua_server.py, asyncio)
    updates      a deploy waiting for the line's update window  (robot_side.py, updates/)

Local outputs take each decision through ``offer()``: a bounded drop-oldest queue and a
wake-up, never a block (:class:`DecisionOutput`).

The inference thread does only per-frame work: it never builds pydantic
objects, logs, or takes a lock beyond the frame queue's. Once per window it
hands a WindowStats to the telemetry thread. A new model is adopted between
two frames (:meth:`Agent.swap_runner`).

Size: one concern, the serving loop and what hangs off each decision (telemetry windows, the
state message, local outputs, shadow and sampler offers, truth joining); the per-frame path is
kept in one function on purpose so its cost can be read in one place. The hooks that grew here
(shadow, sampling, truth) are candidates to move behind one decision-listener interface.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from edge_agent import __version__
from edge_agent.capture import CaptureThread, DropOldestQueue
from edge_agent.commands import CommandDispatcher
from edge_agent.config import AgentConfig
from edge_agent.decision_id import DecisionIds
from edge_agent.decision_log import DecisionLog
from edge_agent.decode import COLOR, Decode, accepts, decode_jpeg, serving_decode
from edge_agent.drift import DriftDetector, WindowConfidence
from edge_agent.frames import Frame, FrameSource
from edge_agent.manifest import DriftThresholds, Manifest
from edge_agent.messages import (
    DeviceState,
    Event,
    EventKind,
    ModelRef,
    ShadowBlock,
    Telemetry,
    Topics,
    Truth,
    dump,
    parse_message,
)
from edge_agent.publisher import Publisher
from edge_agent.runtime import ModelRunner, runtime_builds
from edge_agent.sampling import FrameSampler, SampleDecision
from edge_agent.service import SystemdNotifier, write_status
from edge_agent.shadow import ShadowRunner
from edge_agent.spool import Spool
from edge_agent.telemetry import TelemetryWindow, WindowStats
from lineside_common.errors import MessageError

log = logging.getLogger(__name__)

ModelInfo = Callable[[], tuple[ModelRef | None, ModelRef | None, bool]]


class Clock(Protocol):
    """Time, injectable: ``monotonic()`` for intervals, ``now()`` (UTC) for timestamps."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Decision:
    """One frame's decision, as the embedding callback receives it."""

    frame_id: int
    timestamp: float  # Unix time when decided
    label: str
    label_index: int
    confidence: float
    dimensions_mm: tuple[float, float] | None
    latency_ms: float
    finite: bool
    decision_id: str = ""  # unique on this device across restarts (edge_agent.decision_id)
    model: str = ""  # name@version of the model that made it


def effective_thresholds(manifest: Manifest, config: AgentConfig) -> DriftThresholds:
    """The manifest's drift thresholds with the config's local overrides applied."""
    t = config.thresholds
    overrides = {
        k: v
        for k, v in {
            "low_confidence": t.low_confidence,
            "max_p50_drop": t.max_p50_drop,
            "max_low_confidence_rate": t.max_low_confidence_rate,
            "sustain_windows": t.sustain_windows,
        }.items()
        if v is not None
    }
    return manifest.drift.model_copy(update=overrides) if overrides else manifest.drift


class DecisionOutput(Protocol):
    """A local consumer of every decision (edge_agent.local_output, edge_agent.opcua_server)."""

    def offer(self, decision: Decision) -> None:
        """Hand over one decision; never blocks (a bounded queue that drops the oldest, counted)."""
        ...


class Agent:
    """Wires a FrameSource, a ModelRunner, a Publisher and a Spool together; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        source: FrameSource,
        publisher: Publisher,
        runner: ModelRunner,
        *,
        clock: Clock | None = None,
        spool: Spool | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        agent_version: str = __version__,
        decision_ids: DecisionIds | None = None,
        sampler: FrameSampler | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.publisher = publisher
        self.clock: Clock = clock or SystemClock()
        self.spool = (
            spool
            if spool is not None
            else Spool(config.state_dir / "spool", max_messages=config.telemetry.spool_max_messages)
        )
        self.on_decision = on_decision
        self.decision_ids = decision_ids or DecisionIds.for_state_dir(config.state_dir)
        # Frames kept for retraining; None when capture is off (config `[samples] capture = false`).
        self.sampler = sampler
        self.agent_version = agent_version
        self.device_id = config.device_id
        # Which onnxruntime build(s) this environment has: reported, and two at once is warned about.
        self.runtime = runtime_builds()
        self._runner = runner
        self._pending_runner: ModelRunner | None = None
        self._shadow: ShadowRunner | None = None
        self._adopted = threading.Event()
        self._swap_lock = threading.Lock()
        self._model_info: ModelInfo | None = None
        self._published_state: bytes | None = None  # the retained state last handed to MQTT
        self._listeners: list[Callable[[Telemetry], None]] = []
        # Recent decisions, for joining truth from the line (decision_log.py says why on the device).
        self.decision_log = DecisionLog(
            config.state_dir / "decisions", capacity=config.telemetry.decision_log
        )
        subscribe = getattr(publisher, "subscribe", None)
        if subscribe is not None:
            subscribe(
                Topics(config.broker.topic_root).device(config.device_id, "truth"),
                lambda _topic, payload: self._on_truth(payload),
            )
        # Local outputs (socket, OPC UA): offer() must never block the inference thread.
        self.outputs: list[DecisionOutput] = []
        self.closers: list[Callable[[], None]] = []  # run by stop(): local outputs, line-state readers
        self.status_extras: list[Callable[[], dict[str, Any]]] = []  # more fields for status.json
        self._event_lock = threading.Lock()
        self.commands = CommandDispatcher(self._emit_kw, nice=config.inference.update_nice)
        # Drop-oldest keeps a live camera's latency bounded; a replay that is not paced
        # (realtime = false, not a live source) waits for room instead of dropping.
        self.frames = DropOldestQueue(
            config.source.queue_size,
            block_when_full=not config.source.realtime and not getattr(source, "live", False),
        )
        self.capture = CaptureThread(
            source,
            self.frames,
            loop=config.source.loop,
            reconnect_initial_s=config.source.reconnect_initial_s,
            reconnect_max_s=config.source.reconnect_max_s,
            on_lost=self._on_source_lost,
            on_restored=self._on_source_restored,
            on_end=self._on_source_end,
        )
        self._windows: queue.Queue[tuple[WindowStats, Manifest] | None] = queue.Queue()
        self._stop_inference = threading.Event()
        self._inference_thread = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._telemetry_thread = threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True)
        self._drift: DriftDetector | None = None
        self._drift_sha = ""
        # Counters the status file reports (written by one thread each; read racily, which is fine).
        self.frames_total = 0
        self.errors_total = 0
        self.last_fps = 0.0
        self.heartbeat = self.clock.monotonic()
        self.started_at = self.clock.now()
        self.drifting = False
        self._running = False
        self._stopped = False

    # -- the interface other code (the updater, embedding applications) uses
    @property
    def runner(self) -> ModelRunner:
        """The ModelRunner serving now."""
        return self._runner

    def swap_runner(self, runner: ModelRunner, *, timeout_s: float = 10.0) -> ModelRunner:
        """Make ``runner`` serve from the next frame on; return the old one (the caller closes it).

        The inference loop adopts it between two frames, so no frame is dropped
        or served half by one model and half by the other. Raises TimeoutError
        if the loop does not adopt it within ``timeout_s``.
        """
        with self._swap_lock:
            if not self._inference_thread.is_alive():
                old, self._runner = self._runner, runner
                log.info("model %s replaces %s (loop not running)", runner.manifest.ref, old.manifest.ref)
            else:
                old = self._runner
                self._adopted.clear()
                self._pending_runner = runner
                self.frames.wake()
                if not self._adopted.wait(timeout_s):
                    self._pending_runner = None
                    if self._runner is runner:  # adopted just now
                        return old
                    raise TimeoutError(
                        f"the inference loop did not adopt {runner.manifest.ref} in {timeout_s}s"
                    )
        self.publish_state()
        return old

    @property
    def shadow(self) -> ShadowRunner | None:
        """The model running in shadow beside the serving one, if any."""
        return self._shadow

    def set_shadow(self, shadow: ShadowRunner | None) -> ShadowRunner | None:
        """Run ``shadow`` beside the serving model from the next frame on (None: stop); return the old one.

        The caller closes the old one. The inference thread reads the attribute once per frame.
        """
        old, self._shadow = self._shadow, shadow
        return old

    def add_window_listener(self, cb: Callable[[Telemetry], None]) -> None:
        """Call ``cb(telemetry)`` for every closed window, after it is queued for publishing (telemetry thread)."""
        self._listeners.append(cb)

    def emit_event(
        self,
        kind: EventKind,
        *,
        level: str = "info",
        message: str = "",
        cmd_id: str | None = None,
        rollout_id: str | None = None,
        model: ModelRef | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        """Spool an event (next ``seq`` on the events channel) for delivery; return it. Any thread."""
        built: list[Event] = []

        def make(seq: int) -> bytes:
            ev = Event(
                device_id=self.device_id,
                seq=seq,
                kind=kind,
                at=self.clock.now(),
                level=level,  # type: ignore[arg-type]  # validated by pydantic
                message=message,
                cmd_id=cmd_id,
                rollout_id=rollout_id,
                model=model,
                data=data or {},
            )
            built.append(ev)
            return dump(ev)

        with self._event_lock:
            self.spool.append("events", make)
        self.publisher.notify()
        log.log(logging.WARNING if level != "info" else logging.INFO, "event %s: %s", kind, message)
        return built[0]

    def _emit_kw(self, kind: Any, **kw: Any) -> Event:
        return self.emit_event(kind, **kw)

    def set_command_handler(self, type_: str, handler: Callable[[Any], None]) -> None:
        """Handle ``deploy``, ``rollback`` or ``capture`` commands (run on the commands worker thread)."""
        self.commands.set_handler(type_, handler)

    def set_model_info(self, fn: ModelInfo) -> None:
        """``fn() -> (active, previous, on_probation)`` for the state message (default: the runner's model)."""
        self._model_info = fn

    def state(self, *, online: bool = True) -> DeviceState:
        """The state message as of now."""
        active: ModelRef | None
        previous: ModelRef | None = None
        probation = False
        if self._model_info is not None:
            active, previous, probation = self._model_info()
        else:
            active = self._runner.model_ref()
        return DeviceState(
            device_id=self.device_id,
            online=online,
            since=self.started_at,
            agent_version=self.agent_version,
            device_class=self.config.device_class,
            active_model=active,
            previous_model=previous,
            probation=probation,
            execution_provider=self._runner.provider,
            runtime_build=self.runtime.serving,
            provider_timings_ms=dict(self._runner.choice.timings_ms),
            source=self.source.description,
        )

    def publish_state(self) -> None:
        """(Re)publish the retained state message."""
        payload = dump(self.state(online=True))
        self._published_state = payload
        self.publisher.publish_state(payload)

    def republish_state_if_changed(self) -> None:
        """Republish the retained state when what it reports changed (e.g. probation passed:
        no swap happens, yet the fleet must stop showing ``probation yes``)."""
        try:
            payload = dump(self.state(online=True))
        except Exception:  # the state read failed (a store being written): next window
            log.debug("state not readable now", exc_info=True)
            return
        if payload != self._published_state:
            self._published_state = payload
            self.publisher.publish_state(payload)

    def offline_state(self) -> bytes:
        """The Last Will / final state payload."""
        return dump(self.state(online=False))

    # -- lifecycle
    def start(self) -> None:
        """Start every thread; returns at once (the model is already loaded and warm)."""
        self._running = True
        if self.config.inference.gil_switch_interval_ms is not None:
            # Process-wide, and this process is the agent: a shorter slice means the inference
            # thread waits at most ~1 ms for the GIL while telemetry or an update holds it.
            sys.setswitchinterval(self.config.inference.gil_switch_interval_ms / 1000)
        self.publisher.start(self.commands.submit)
        self.publish_state()
        self.commands.start()
        self._telemetry_thread.start()
        if self.sampler is not None:
            self.sampler.start()
        self._inference_thread.start()
        self.capture.start()
        self.emit_event(
            "agent.started",
            message=f"serving {self._runner.manifest.ref} on {self._runner.provider} from {self.source.description}",
            model=self._runner.model_ref(),
            data={"provider": self._runner.provider, "source": self.source.description, "pid": os.getpid()},
        )
        self.write_status()

    def run(
        self,
        stop: threading.Event,
        *,
        notifier: SystemdNotifier | None = None,
        watchdog_interval_s: float = 0.0,
    ) -> None:
        """Start, tell systemd READY=1, ping its watchdog while healthy, stop cleanly when ``stop`` is set."""
        self.start()
        if notifier is not None:
            notifier.ready(self.status_line())
        tick = watchdog_interval_s if watchdog_interval_s > 0 else 1.0
        while not stop.wait(tick):
            if notifier is not None:
                if watchdog_interval_s > 0 and self.healthy():
                    notifier.watchdog()
                notifier.status(self.status_line())
        if notifier is not None:
            notifier.stopping()
        self.stop()

    def healthy(self) -> bool:
        """The inference loop is alive and has turned recently (what the watchdog vouches for)."""
        return self._inference_thread.is_alive() and self.clock.monotonic() - self.heartbeat < 30.0

    def stop(self) -> None:
        """Finish the current frame, flush the last window, publish offline state, disconnect."""
        if self._stopped:
            return
        self._stopped = True
        self.capture.stop()
        self._stop_inference.set()
        self.frames.wake()
        self._inference_thread.join(timeout=10)
        shadow = self.set_shadow(None)
        if shadow is not None:
            shadow.close()
        if self.sampler is not None:
            self.sampler.stop()
        self.emit_event("agent.stopping", message="shutting down", model=self._runner.model_ref())
        self._windows.put(None)
        self._telemetry_thread.join(timeout=10)
        self.commands.stop()
        for close in self.closers:
            try:
                close()
            except Exception:
                log.exception("stopping a local output failed")
        self.publisher.publish_state(self.offline_state())
        self.publisher.stop(self.config.telemetry.flush_timeout_s)
        self._running = False
        self.write_status(stopped=True)
        try:
            self.source.close()
        except Exception:
            log.exception("closing the source failed")

    # -- capture callbacks (capture thread)
    def _on_source_lost(self, why: str) -> None:
        self.emit_event("camera.lost", level="warning", message=why, data={"source": self.source.description})

    def _on_source_restored(self, attempts: int) -> None:
        self.emit_event(
            "camera.restored",
            message=f"source back after {attempts} attempts",
            data={"source": self.source.description, "attempts": attempts},
        )

    def _on_source_end(self) -> None:
        log.info("the source has no more frames; the agent keeps reporting until stopped")

    # -- the inference thread
    def _apply_decode(self, runner: ModelRunner) -> list[Decode]:
        """Tell the source the cheapest decode every frame consumer accepts; the model's validated list.

        The serving model is the only consumer of frames today; a shadow model or a frame sampler
        adds its own list here, and one without a reduced path keeps the decode in full colour.
        """
        validated: list[Decode] = list(runner.manifest.input.validated_decodes)
        set_decode = getattr(self.source, "set_decode", None)
        if set_decode is not None:
            decode = serving_decode([validated])
            set_decode(decode)
            log.info("frames decoded as %s for %s", decode, runner.manifest.ref)
        return validated

    def _inference_loop(self) -> None:
        cores = self.config.inference.cpu_affinity
        if cores:
            _pin_this_thread(cores)
        clock = self.clock
        runner = self._runner
        thresholds = effective_thresholds(runner.manifest, self.config)
        labels = list(runner.manifest.labels)
        window = TelemetryWindow(labels, low_confidence=thresholds.low_confidence, model=runner.model_ref())
        window_s = self.config.telemetry.window_s
        start = clock.monotonic()
        window.reset(clock.now(), start)
        window_end = start + window_s
        frames = self.frames
        publish = self.publisher.publish_decision if self.config.telemetry.decisions else None
        validated = self._apply_decode(runner)
        label_json = [json.dumps(x) for x in labels]
        outputs = self.outputs
        next_id = self.decision_ids.next
        log_decision = self.decision_log.record
        model_name = f"{runner.manifest.name}@{runner.manifest.version}"
        model_json = json.dumps(model_name)
        perf = time.perf_counter
        wall = time.time
        stop = self._stop_inference
        sampler = self.sampler
        model_ref = runner.model_ref()
        while True:
            frame = frames.get(0.1)
            now = clock.monotonic()
            self.heartbeat = now
            if now >= window_end:
                window.add_dropped(frames.take_dropped())
                self._windows.put((window.close(now, clock.now()), runner.manifest))
                window_end = now + window_s
            pending = self._pending_runner
            if pending is not None:
                # Between two frames: close the window so one window has one model, then adopt.
                window.add_dropped(frames.take_dropped())
                self._windows.put((window.close(now, clock.now()), runner.manifest))
                window_end = now + window_s
                runner = pending
                self._runner = runner
                self._pending_runner = None
                thresholds = effective_thresholds(runner.manifest, self.config)
                labels = list(runner.manifest.labels)
                label_json = [json.dumps(x) for x in labels]
                model_name = f"{runner.manifest.name}@{runner.manifest.version}"
                model_json = json.dumps(model_name)
                model_ref = runner.model_ref()
                window = TelemetryWindow(
                    labels, low_confidence=thresholds.low_confidence, model=runner.model_ref()
                )
                window.reset(clock.now(), now)
                validated = self._apply_decode(runner)
                self._adopted.set()
            if frame is None:
                if stop.is_set():
                    break
                continue
            t0 = perf()
            try:
                image = frame.image
                if not accepts(validated, frame.decode):
                    # Decoded for the model before a swap (still in the queue): decode it again
                    # in full colour rather than feed this model a path it was not validated on.
                    image = _full_colour(frame)
                pred = runner.predict(image)
            except Exception:
                window.add_error()
                self.errors_total += 1
                continue
            latency = perf() - t0
            window.add(pred.label_index, pred.confidence, latency, pred.finite, pred.dimensions_mm)
            self.frames_total += 1
            decision_id = next_id()
            shadow = self._shadow
            if shadow is not None:
                # The frame as decoded for the serving model; the shadow thread decodes it again
                # in full colour if its own model was not validated on that decode.
                shadow.offer(
                    runner.sha256,
                    image,
                    pred,
                    decode=frame.decode,
                    encoded=frame.encoded,
                    frame=frame,
                    decision_id=decision_id,
                )
            log_decision(
                decision_id, model_name, labels[pred.label_index] if pred.finite else None, pred.dimensions_mm
            )
            if publish is not None:
                dims = pred.dimensions_mm
                publish(
                    (
                        f'{{"id":"{decision_id}","frame_id":{frame.index},"ts":{wall():.3f},'
                        f'"label":{label_json[pred.label_index]},'
                        f'"confidence":{pred.confidence:.4f},"latency_ms":{latency * 1000:.3f},'
                        f'"dimensions_mm":{"null" if dims is None else f"[{dims[0]:.1f},{dims[1]:.1f}]"},'
                        f'"model":{model_json}}}'
                    ).encode()
                    if pred.finite
                    else f'{{"id":"{decision_id}","frame_id":{frame.index},"ts":{wall():.3f},"label":null,'
                    f'"confidence":0,"model":{model_json}}}'.encode()
                )
            if self.on_decision is not None or outputs:
                decision = Decision(
                    frame.index,
                    wall(),
                    labels[pred.label_index],
                    pred.label_index,
                    pred.confidence,
                    pred.dimensions_mm,
                    latency * 1000,
                    pred.finite,
                    decision_id,
                    model_name,
                )
                if self.on_decision is not None:
                    self.on_decision(decision)
                for out in outputs:
                    out.offer(decision)
            if sampler is not None and pred.finite:
                sampler.offer(
                    frame,
                    SampleDecision(
                        decision_id,
                        labels[pred.label_index],
                        pred.confidence,
                        pred.probabilities,
                        pred.dimensions_mm,
                    ),
                    model=model_ref,
                )
            if stop.is_set() and len(frames) == 0:
                break
        # The last, partial window: what was served before the stop still counts.
        end = clock.monotonic()
        window.add_dropped(frames.take_dropped())
        if len(window) or window.errors or window.dropped:
            self._windows.put((window.close(end, clock.now()), runner.manifest))

    # -- the telemetry thread
    def _telemetry_loop(self) -> None:
        while True:
            item = self._windows.get()
            if item is None:
                return
            stats, manifest = item
            try:
                self._publish_window(stats, manifest)
            except Exception:
                log.exception("could not publish a telemetry window")

    def _on_truth(self, payload: bytes) -> None:
        """A truth message (MQTT thread): judged against the decision log, answered by an event."""
        try:
            truth = parse_message(Truth, payload)
        except MessageError as exc:
            self.emit_event("truth.rejected", level="warning", message=str(exc), data={"reason": "malformed"})
            return
        kind, data = self.decision_log.join(truth)
        model = None
        if "model" in data:
            name, _, version = str(data["model"]).partition("@")
            model = ModelRef(name=name, version=version)
        self.emit_event(
            kind,  # type: ignore[arg-type]  # judge() returns one of the two truth kinds
            level="info" if kind == "truth.joined" else "warning",
            message=f"truth for {truth.decision_id}: {data.get('reason', 'joined')}",
            model=model,
            data=data,
        )

    def _publish_window(self, stats: WindowStats, manifest: Manifest) -> None:
        self.decision_log.flush()
        spool_dropped = self.spool.take_dropped()
        built: list[Telemetry] = []

        shadow = self._shadow
        block = shadow.take_block() if shadow is not None else None

        def make(seq: int) -> bytes:
            t = stats.to_telemetry(self.device_id, seq, spool_dropped=spool_dropped)
            if block is not None:
                t = t.model_copy(update={"shadow": ShadowBlock.model_validate(block)})
            built.append(t)
            return dump(t)

        self.spool.append("telemetry", make)
        self.publisher.notify()
        telemetry = built[0]
        self.last_fps = stats.fps
        for cb in list(self._listeners):
            try:
                cb(telemetry)
            except Exception:
                log.exception("window listener failed")
        self._check_drift(stats, manifest)
        self.republish_state_if_changed()
        self.write_status()

    def _check_drift(self, stats: WindowStats, manifest: Manifest) -> None:
        if not self.config.thresholds.drift:
            return
        sha = stats.model.sha256 if stats.model else manifest.ref
        if self._drift is None or sha != self._drift_sha:
            if self._drift is not None and self._drift.drifting:
                self.emit_event(
                    "drift",
                    message="drift episode ended: the model changed",
                    model=stats.model,
                    data={"state": "cleared", "reason": "model changed"},
                )
            self._drift = DriftDetector(
                manifest.confidence_baseline, effective_thresholds(manifest, self.config)
            )
            self._drift_sha = sha
            self.drifting = False
        change = self._drift.update(
            WindowConfidence(
                frames=stats.scored,
                confidence_mean=stats.confidence_mean,
                confidence_p05=stats.confidence_p05,
                confidence_p50=stats.confidence_p50,
                low_confidence_rate=stats.low_confidence_rate,
            )
        )
        if change is None:
            return
        self.drifting = change.state == "drifting"
        if self.sampler is not None:
            self.sampler.drifting = self.drifting
        self.emit_event(
            "drift",
            level="warning" if self.drifting else "info",
            message=change.message,
            model=stats.model,
            data={"state": change.state, "reasons": list(change.reasons), **change.evidence},
        )

    # -- status
    def status(self, *, stopped: bool = False) -> dict[str, Any]:
        """What ``edge-agent status`` shows."""
        runner = self._runner
        return {
            "pid": os.getpid(),
            "device_id": self.device_id,
            "agent_version": self.agent_version,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.clock.now().isoformat(),
            "stopped": stopped,
            "model": runner.model_ref().model_dump(),
            "provider": runner.provider,
            "provider_timings_ms": dict(runner.choice.timings_ms),
            "runtime_build": self.runtime.serving,
            "runtime_builds_installed": list(self.runtime.installed),
            "runtime_conflict": self.runtime.conflict,
            "source": self.source.description,
            "source_state": self.capture.state,
            "frames": self.frames_total,
            "errors": self.errors_total,
            "dropped": self.frames.dropped_total,
            "fps": round(self.last_fps, 2),
            "broker_connected": self.publisher.connected,
            "spool_depth": len(self.spool),
            "spool_dropped": self.spool.dropped_total,
            "drifting": self.drifting,
            **{k: v for extra in self.status_extras for k, v in extra().items()},
            "samples": None if self.sampler is None else self.sampler.counters(),
        }

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        r = self._runner
        link = "connected" if self.publisher.connected else "offline"
        return f"{r.manifest.ref} on {r.provider}; {self.frames_total} frames, {self.last_fps:.1f} fps; mqtt {link}, spool {len(self.spool)}"

    def write_status(self, *, stopped: bool = False) -> None:
        try:
            write_status(self.config.state_dir, self.status(stopped=stopped))
        except OSError as exc:
            log.warning("could not write status.json: %s", exc)


def _full_colour(frame: Frame) -> np.ndarray:
    image = decode_jpeg(frame.encoded, COLOR) if frame.encoded is not None else None
    if image is None:
        raise ValueError(f"frame {frame.index} has no full-colour decode")
    return image


def _pin_this_thread(cores: list[int]) -> None:
    """Pin the calling thread (Linux: pid 0 is the calling thread) to ``cores``; warn if it cannot."""
    try:
        os.sched_setaffinity(0, cores)
    except (OSError, AttributeError, ValueError) as exc:
        # A core the cgroup or the machine does not have: serve unpinned rather than not at all.
        log.warning("cannot pin the inference thread to cores %s: %s", cores, exc)
