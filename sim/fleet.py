"""Simulated devices that speak the real agent protocol, without inference: fleets of 100s on one machine.

Each ``SimDevice`` has its own MQTT client (so its own Last Will), publishes its retained
``state``, one ``telemetry`` window every ``window_s`` (with a monotonically increasing ``seq``
that keeps increasing across restarts: it starts from the wall clock in ms), and answers the
``cmd`` topic like an agent does:

- ``deploy`` → ``update.started``, ``update.verified``, ``update.installed``, ``probation.started``
  (state: the new version active, the old one previous, probation on), then after
  ``probation_s`` either ``probation.passed`` or — for a ``faulty`` version — ``rollback`` with a
  reason and evidence (state back to the old version). ``reject`` versions answer
  ``update.rejected``. Idempotent on ``cmd_id``: a re-sent deploy re-publishes the last answer.
- ``deploy`` with ``mode: shadow`` → ``command.rejected`` (reason ``unsupported``): no shadow runner here.
- ``rollback`` → back to the previous model, ``rollback`` event echoing the ``cmd_id``.
- ``ping`` → ``pong``.

A "low-confidence" version reports confidence p50 ``low_confidence_p50`` and most frames under
the low-confidence threshold, which is how tests provoke the fleet's model-quality gate. With
``server_url``, a deploy of a release that the server's TUF ``targets.json`` does not list fails
(``update.failed``), as a real agent's download would; with a device ``token`` too, the release's
manifest is downloaded with it as a real agent does, and a refused token fails the deploy.

Networking: devices are split into groups, each group served by ONE thread that multiplexes its
clients' sockets with ``selectors`` (epoll) and also runs their timers — no thread per device.
Thousands of devices need as many descriptors: ``edge-sim fleet`` raises its RLIMIT_NOFILE soft limit.

Size: one concern, a simulated device's side of the protocol and the epoll loop that multiplexes
thousands of them; kept together because each device's timers run on its group's loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.messages import (
    DeployCommand,
    DeviceState,
    Event,
    ModelRef,
    PingCommand,
    RollbackCommand,
    Telemetry,
    Topics,
    dump,
    parse_command,
)
from lineside_common.errors import MessageError

log = logging.getLogger(__name__)

PublishFn = Callable[[str, bytes, bool], None]  # topic, payload, retain (always QoS 1)


@dataclass
class SimOptions:
    """How the simulated devices behave."""

    topic_root: str = "lineside/v1"
    initial_model: str = "shapes@1.0.0"
    agent_version: str = "0.1.0-sim"
    device_class: str = "sim"
    window_s: float = 1.0
    fps: float = 20.0
    confidence_p50: float = 0.92
    low_confidence_p50: float = 0.55
    low_confidence_versions: set[str] = field(default_factory=set)
    faulty_versions: set[str] = field(default_factory=set)
    reject_versions: set[str] = field(default_factory=set)
    install_delay_s: float = 0.3
    probation_s: float = 1.0
    server_url: str | None = None
    token: str | None = None  # a device token (`fleet devices token`): downloads need one
    seed: int = 0
    # The plant's truth: per window, this share of the window's decisions gets a truth.joined
    # event (as the real agent sends once a line checker's truth joins its decision log), correct
    # with probability truth_accuracy (low-confidence versions: low_confidence_truth_accuracy).
    truth_share: float = 0.0
    truth_accuracy: float = 0.9
    low_confidence_truth_accuracy: float = 0.5
    labels: tuple[str, ...] = ("circle-80", "square-80", "triangle-100")


def _now_dt(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _ref(text: str | None) -> ModelRef | None:
    if not text:
        return None
    name, _, version = text.partition("@")
    return ModelRef(name=name, version=version)


class ReleaseCheck:
    """Does the server's TUF targets.json list NAME/VERSION? (cached briefly; no server → yes)."""

    def __init__(self, server_url: str | None, ttl_s: float = 2.0, *, token: str | None = None) -> None:
        self.server_url = server_url.rstrip("/") if server_url else None
        self.ttl_s = ttl_s
        self.token = token
        self.refused: str | None = None  # why the server refused the token, if it did
        self._paths: set[str] = set()
        self._sha256: dict[str, str] = {}
        self._at = 0.0
        self._lock = threading.Lock()

    def exists(self, name: str, version: str) -> bool:
        if self.server_url is None:
            return True
        import httpx

        with self._lock:
            if (
                time.monotonic() - self._at > self.ttl_s
                or f"{name}/{version}/manifest.json" not in self._paths
            ):
                try:
                    r = httpx.get(f"{self.server_url}/tuf/metadata/targets.json", timeout=5.0)
                    if r.status_code == 200:
                        targets = json.loads(r.content)["signed"]["targets"]
                        self._paths = set(targets)
                        self._sha256 = {p: t["hashes"]["sha256"] for p, t in targets.items()}
                        self._at = time.monotonic()
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    log.warning("cannot read the server's targets.json: %s", exc)
            path = f"{name}/{version}/manifest.json"
            if path not in self._paths:
                return False
            return self.token is None or self._download(httpx, path)

    def _download(self, httpx: Any, path: str) -> bool:
        """GET the target with the device token, as a real agent's TUF fetcher does."""
        folder, _, file = path.rpartition("/")
        url = f"{self.server_url}/tuf/targets/{folder}/{self._sha256[path]}.{file}"
        try:
            r = httpx.get(url, headers={"Authorization": f"Bearer {self.token}"}, timeout=5.0)
        except httpx.HTTPError as exc:
            log.warning("cannot download %s: %s", path, exc)
            return False
        self.refused = (
            f"the server refused the device token (HTTP {r.status_code})"
            if r.status_code in (401, 403)
            else None
        )
        return bool(r.status_code == 200)


class SimDevice:
    """One simulated device's behaviour; the I/O is the ``publish`` function it is given."""

    def __init__(
        self, device_id: str, opts: SimOptions, publish: PublishFn, *, releases: ReleaseCheck | None = None
    ) -> None:
        self.device_id = device_id
        self.opts = opts
        self.publish = publish
        self.releases = releases or ReleaseCheck(None)
        self.topics = Topics(opts.topic_root)
        self.active: str | None = opts.initial_model or None
        self.previous: str | None = None
        self.probation = False
        base = int(time.time() * 1000)
        self.tel_seq = base
        self.ev_seq = base
        self.rng = random.Random(f"{opts.seed}:{device_id}")
        self.next_window: float | None = None
        self.timers: list[tuple[float, Callable[[float], None]]] = []
        self.answers: dict[str, list[bytes]] = {}  # cmd_id → events published for it (re-sent on repeat)
        self.busy_cmd: str | None = None
        self.boot = f"{self.rng.randrange(1, 1 << 16)}.{self.rng.randrange(1 << 16):04x}"
        self.decisions = 0

    # -- messages ----------------------------------------------------------------------------------

    def state(self, *, online: bool = True, now: float | None = None) -> DeviceState:
        return DeviceState(
            device_id=self.device_id,
            online=online,
            since=_now_dt(now if now is not None else time.time()),
            agent_version=self.opts.agent_version,
            device_class=self.opts.device_class,
            active_model=_ref(self.active),
            previous_model=_ref(self.previous),
            probation=self.probation,
            execution_provider="CPUExecutionProvider",
            source="sim",
        )

    def publish_state(self, now: float) -> None:
        self.publish(self.topics.device(self.device_id, "state"), dump(self.state(now=now)), True)

    def event(
        self,
        kind: str,
        now: float,
        *,
        cmd_id: str | None = None,
        rollout_id: str | None = None,
        level: str = "info",
        message: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        self.ev_seq += 1
        ev = Event(
            device_id=self.device_id,
            seq=self.ev_seq,
            kind=kind,
            at=_now_dt(now),
            level=level,  # type: ignore[arg-type]  # "info" | "warning" | "error"
            message=message,
            cmd_id=cmd_id,
            rollout_id=rollout_id,
            model=_ref(self.active),
            data=data or {},
        )
        payload = dump(ev)
        if cmd_id is not None:
            self.answers.setdefault(cmd_id, []).append(payload)
        self.publish(self.topics.device(self.device_id, "events"), payload, False)

    def telemetry(self, now: float) -> Telemetry:
        version = self.active.partition("@")[2] if self.active else None
        frames = max(1, round(self.opts.fps * self.opts.window_s))
        low = version in self.opts.low_confidence_versions
        p50 = (self.opts.low_confidence_p50 if low else self.opts.confidence_p50) + self.rng.uniform(
            -0.01, 0.01
        )
        low_frac = 0.7 if low else 0.03
        self.tel_seq += 1
        return Telemetry(
            device_id=self.device_id,
            seq=self.tel_seq,
            window_start=_now_dt(now - self.opts.window_s),
            window_s=self.opts.window_s,
            frames=frames,
            fps=frames / self.opts.window_s,
            latency_ms_p50=2.0,
            latency_ms_p99=4.0,
            confidence_mean=p50 - 0.02,
            confidence_p05=max(0.0, p50 - 0.3),
            confidence_p50=p50,
            low_confidence=round(frames * low_frac),
            model=_ref(self.active),
        )

    def truth(self, frames: int, now: float) -> None:
        """truth.joined events for ``truth_share`` of this window's ``frames`` decisions."""
        first = self.decisions
        self.decisions += frames
        if self.opts.truth_share <= 0 or self.active is None:
            return
        low = self.active.partition("@")[2] in self.opts.low_confidence_versions
        p = self.opts.low_confidence_truth_accuracy if low else self.opts.truth_accuracy
        for n in range(first + 1, self.decisions + 1):
            if self.rng.random() >= self.opts.truth_share:
                continue
            true = self.rng.choice(self.opts.labels)
            correct = self.rng.random() < p
            predicted = (
                true if correct else self.rng.choice([x for x in self.opts.labels if x != true] or [true])
            )
            self.event(
                "truth.joined",
                now,
                data={
                    "decision_id": f"{self.boot}-{n}",
                    "truth_id": "",
                    "source": "sim-fleet",
                    "model": self.active,
                    "predicted": predicted,
                    "label": true,
                    "correct": predicted == true,
                },
            )

    # -- behaviour ---------------------------------------------------------------------------------

    def on_connect(self, now: float) -> None:
        self.publish_state(now)
        if self.next_window is None:
            self.next_window = now + self.opts.window_s

    def poll(self, now: float, *, telemetry: bool = True) -> None:
        """Run due timers and emit due telemetry (none while ``telemetry`` is False)."""
        due = [t for t in self.timers if t[0] <= now]
        if due:
            self.timers = [t for t in self.timers if t[0] > now]
            for _, fn in sorted(due, key=lambda t: t[0]):
                fn(now)
        if telemetry and self.next_window is not None and now >= self.next_window:
            tel = self.telemetry(now)
            self.publish(self.topics.device(self.device_id, "telemetry"), dump(tel), False)
            self.truth(tel.frames, now)
            self.next_window = max(self.next_window + self.opts.window_s, now)

    def on_command(self, payload: bytes, now: float) -> None:
        try:
            cmd = parse_command(payload, self.topics.device(self.device_id, "cmd"))
        except MessageError as exc:
            self.event("message.rejected", now, level="warning", message=str(exc))
            return
        if cmd.cmd_id in self.answers and cmd.cmd_id != self.busy_cmd:
            for p in self.answers[cmd.cmd_id]:  # a repeat: answer again, do nothing again
                self.publish(self.topics.device(self.device_id, "events"), p, False)
            return
        if isinstance(cmd, PingCommand):
            self.event("pong", now, cmd_id=cmd.cmd_id)
        elif isinstance(cmd, DeployCommand) and cmd.mode == "shadow":
            # No shadow runner here: refused, as an agent refuses what it cannot do, never taken
            # for a real install (the fleet's shadow phase is measured with real agents).
            self.event(
                "command.rejected",
                now,
                cmd_id=cmd.cmd_id,
                rollout_id=cmd.rollout_id,
                level="warning",
                message="shadow deploys are not supported by the simulator",
                data={"reason": "unsupported"},
            )
        elif isinstance(cmd, DeployCommand):
            self._deploy(cmd, now)
        elif isinstance(cmd, RollbackCommand):
            self._rollback(cmd.cmd_id, cmd.rollout_id, cmd.reason or "fleet rollback", now)
        else:
            self.event(
                "command.rejected",
                now,
                cmd_id=cmd.cmd_id,
                message=f"{cmd.type} not supported by the simulator",
            )

    def _deploy(self, cmd: DeployCommand, now: float) -> None:
        if self.busy_cmd is not None:
            return  # an update is in progress; the fleet re-sends if it needs to
        target = f"{cmd.name}@{cmd.version}"
        c, r = cmd.cmd_id, cmd.rollout_id
        self.answers[c] = []
        self.event("update.started", now, cmd_id=c, rollout_id=r, message=target)
        if cmd.version in self.opts.reject_versions:
            self.event(
                "update.rejected",
                now,
                cmd_id=c,
                rollout_id=r,
                level="error",
                data={"reason": "simulated rejection"},
            )
            return
        if not self.releases.exists(cmd.name, cmd.version):
            refused = self.releases.refused
            self.event(
                "update.failed",
                now,
                cmd_id=c,
                rollout_id=r,
                level="error",
                data={"reason": refused or f"{target} is not in the repository"},
            )
            return
        if self.active == target and not self.probation:
            self.event("update.installed", now, cmd_id=c, rollout_id=r, message="already active")
            self.event("probation.passed", now, cmd_id=c, rollout_id=r, message="already active")
            return
        self.busy_cmd = c

        def installed(t: float) -> None:
            self.event("update.verified", t, cmd_id=c, rollout_id=r)
            self.previous, self.active, self.probation = self.active, target, True
            self.event("update.installed", t, cmd_id=c, rollout_id=r)
            self.event("probation.started", t, cmd_id=c, rollout_id=r)
            self.publish_state(t)
            self.timers.append((t + self.opts.probation_s, verdict))

        def verdict(t: float) -> None:
            self.busy_cmd = None
            self.probation = False
            if cmd.version in self.opts.faulty_versions:
                bad = self.active
                self.active, self.previous = self.previous, None
                self.event(
                    "rollback",
                    t,
                    cmd_id=c,
                    rollout_id=r,
                    level="error",
                    message=f"probation failed for {bad}",
                    data={
                        "reason": "probation failed: error rate 0.5 > 0.01",
                        "evidence": {"error_rate": 0.5},
                    },
                )
            else:
                self.event("probation.passed", t, cmd_id=c, rollout_id=r)
            self.publish_state(t)

        self.timers.append((now + self.opts.install_delay_s, installed))

    def _rollback(self, cmd_id: str, rollout_id: str | None, reason: str, now: float) -> None:
        if self.previous is None:
            self.event(
                "command.rejected",
                now,
                cmd_id=cmd_id,
                rollout_id=rollout_id,
                message="no previous model to roll back to",
            )
            return
        self.timers.clear()
        self.busy_cmd = None
        bad = self.active
        self.active, self.previous, self.probation = self.previous, None, False
        self.event(
            "rollback",
            now,
            cmd_id=cmd_id,
            rollout_id=rollout_id,
            level="warning",
            message=f"rolled back from {bad}",
            data={"reason": reason},
        )
        self.publish_state(now)


# How often a group's thread sweeps all its clients (timers are this coarse; the agent's are not finer).
SWEEP_S = 0.1


class _Group(threading.Thread):
    """One thread: the sockets and timers of a group of devices.

    Sockets are watched with ``selectors`` (epoll on Linux), not ``select.select``, which
    cannot watch a descriptor numbered 1024 or above: a fleet of thousands of clients in one
    process has such descriptors, and ``select`` would silently stop serving them.
    """

    def __init__(self, fleet: SimFleet, devices: list[tuple[SimDevice, mqtt.Client]]) -> None:
        super().__init__(name="sim-fleet", daemon=True)
        self.fleet = fleet
        self.devices = devices
        self._sel = selectors.DefaultSelector()
        self._watched: dict[mqtt.Client, tuple[Any, int]] = {}  # client → (socket, events)

    def _sync(self) -> None:
        """Register each client's current socket for what it wants now (sockets change on reconnect)."""
        for _, c in self.devices:
            s = c.socket()
            old = self._watched.get(c)
            if s is None:
                if old is not None:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._sel.unregister(old[0])
                    del self._watched[c]
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.want_write() else 0)
            if old is None or old[0] is not s:
                if old is not None:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._sel.unregister(old[0])
                try:
                    self._sel.register(s, events, c)
                except (KeyError, ValueError, OSError):
                    continue  # closed under us; picked up again on the next reconnect
                self._watched[c] = (s, events)
            elif old[1] != events:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.modify(s, events, c)
                self._watched[c] = (s, events)

    def run(self) -> None:
        last_retry = last_sweep = 0.0
        try:
            while not self.fleet.stopping.is_set():
                now = time.time()
                # The sweep over every client (sockets to watch, keepalives, timers, telemetry)
                # runs every SWEEP_S, not after every wake-up: with thousands of busy sockets
                # select() returns at once, and sweeping each time cost most of the simulator's
                # CPU at 10,000 devices (BENCHMARKS.md section 13).
                sweep = now - last_sweep >= SWEEP_S
                if sweep:
                    last_sweep = now
                    self._sync()
                if not self._watched:
                    self.fleet.stopping.wait(0.05)
                    ready = []
                else:
                    try:
                        ready = self._sel.select(0.05)
                    except (OSError, ValueError):
                        ready = []
                for key, mask in ready:
                    c = key.data
                    if mask & selectors.EVENT_READ:
                        c.loop_read()
                    if mask & selectors.EVENT_WRITE and c.socket() is key.fileobj:
                        c.loop_write()
                        if not c.want_write():  # drained: stop waking up for writability
                            with contextlib.suppress(KeyError, ValueError, OSError):
                                self._sel.modify(key.fileobj, selectors.EVENT_READ, c)
                                self._watched[c] = (key.fileobj, selectors.EVENT_READ)
                if not sweep:
                    continue
                telemetry = not self.fleet.telemetry_paused.is_set()
                for dev, c in self.devices:
                    c.loop_misc()
                    if c.is_connected():
                        dev.poll(now, telemetry=telemetry)
                if now - last_retry > 1.0:
                    last_retry = now
                    for _, c in self.devices:
                        if c.socket() is None and not self.fleet.stopping.is_set():
                            with contextlib.suppress(OSError):
                                c.reconnect()
        finally:
            self._sel.close()


class SimFleet:
    """N simulated devices against one broker; ``start()`` connects them, ``stop()`` disconnects."""

    def __init__(
        self, broker_url: str, device_ids: list[str], opts: SimOptions, *, per_thread: int = 250
    ) -> None:
        u = urlparse(broker_url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 1883
        self.opts = opts
        self.stopping = threading.Event()
        # Set: no more telemetry windows (commands are still answered), so a test can count
        # exactly what was sent once everything queued has left.
        self.telemetry_paused = threading.Event()
        self.releases = ReleaseCheck(opts.server_url, token=opts.token)
        self.devices: list[tuple[SimDevice, mqtt.Client]] = []
        for d in device_ids:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"sim-{d}", protocol=mqtt.MQTTv311, clean_session=True
            )
            dev = SimDevice(d, opts, self._publisher(client), releases=self.releases)
            client.will_set(dev.topics.device(d, "state"), dump(dev.state(online=False)), qos=1, retain=True)
            client.on_connect = self._on_connect(dev)
            client.on_message = self._on_message(dev)
            self.devices.append((dev, client))
        self.groups = [
            _Group(self, self.devices[i : i + per_thread]) for i in range(0, len(self.devices), per_thread)
        ]

    @staticmethod
    def _publisher(client: mqtt.Client) -> PublishFn:
        def publish(topic: str, payload: bytes, retain: bool) -> None:
            client.publish(topic, payload, qos=1, retain=retain)

        return publish

    @staticmethod
    def _on_connect(dev: SimDevice) -> Callable[..., None]:
        def cb(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            if getattr(rc, "is_failure", False):
                return
            client.subscribe(dev.topics.device(dev.device_id, "cmd"), qos=1)
            dev.on_connect(time.time())

        return cb

    @staticmethod
    def _on_message(dev: SimDevice) -> Callable[..., None]:
        def cb(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            dev.on_command(bytes(msg.payload), time.time())

        return cb

    def start(self) -> None:
        for _, c in self.devices:
            c.connect_async(self.host, self.port, keepalive=10)
            try:
                c.reconnect()
            except OSError as exc:
                log.warning("%s: broker not reachable yet (%s); retrying", c._client_id, exc)
        for g in self.groups:
            g.start()

    def connected(self) -> int:
        return sum(1 for _, c in self.devices if c.is_connected())

    def stop(self) -> None:
        """Clean disconnect: publish offline state first (a clean disconnect does not fire the Will)."""
        now = time.time()
        for dev, c in self.devices:
            if c.is_connected():
                c.publish(
                    dev.topics.device(dev.device_id, "state"),
                    dump(dev.state(online=False, now=now)),
                    qos=1,
                    retain=True,
                )
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(c.want_write() for _, c in self.devices):
            time.sleep(0.05)
        self.stopping.set()
        for g in self.groups:
            g.join(timeout=5)
        for _, c in self.devices:
            if c.socket() is not None:
                c.disconnect()
                c.loop_write()
