"""The robot's side of the agent, wired in one place: local outputs, the line's state, the update window.

:func:`attach_robot_side` is called once by ``edge-agent run`` (cli_run.build_agent). It

- starts the local decision outputs that the config enables (Unix socket, OPC UA server); one that
  cannot start is an ``error`` event with a ``reason`` — serving continues without it;
- subscribes to the line's state (``[line] source``: the plant broker's topic, or lines written
  to the local socket) and reports changes and unreadable values as ``line.state`` events;
- gives the updater a :class:`WindowGate`, so a staged model waits for an allowed line state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.line_state import LineSnapshot, LineStateBoard, parse_line_state
from edge_agent.local_output import LocalSocketOutput
from edge_agent.messages import Topics
from edge_agent.update_window import UNKNOWN, Defer, WindowPolicy, decide
from lineside_common.errors import ConfigError, LineStateError, LocalOutputError

log = logging.getLogger(__name__)

Emit = Callable[..., Any]


class WindowCancelledError(Exception):
    """A deferred swap was cancelled (a rollback came first); ``reason`` says by what."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"deferred swap cancelled: {reason}")
        self.reason = reason


class WindowGate:
    """The shell around :func:`edge_agent.update_window.decide`: waits on the line, reports, cancels.

    :meth:`wait` blocks the update worker (never the command worker: rollbacks pass) until the
    policy says swap; it emits ``update.deferred`` when it starts waiting and again whenever the
    reason changes (``deadline_passed`` is a warning: the fleet raises an alert).
    """

    def __init__(
        self,
        policy: WindowPolicy,
        board: LineStateBoard,
        emit: Emit,
        *,
        clock: Callable[[], float] = time.monotonic,
        recheck_s: float = 1.0,
    ) -> None:
        self.policy = policy
        self.board = board
        self.emit = emit
        self.clock = clock
        self.recheck_s = recheck_s
        self._cancel: str | None = None
        self._lock = threading.Lock()
        self.waiting = False

    def cancel(self, reason: str) -> None:
        """Cancel the swap waiting now, if any (rollbacks are never deferred)."""
        with self._lock:
            if self.waiting:
                self._cancel = reason
        self.board.poke()

    def wait(self, ref: Any, model: Any, ctx: dict[str, Any]) -> dict[str, Any]:
        """Block until the window opens; return how (``reason``, ``deferred_s``, ``line_state``)."""
        start = self.clock()
        last: Defer | None = None
        with self._lock:
            self._cancel = None
            self.waiting = True
        try:
            while True:
                with self._lock:
                    if self._cancel is not None:
                        raise WindowCancelledError(self._cancel)
                version = self.board.version()
                snap = self.board.snapshot()
                waited = self.clock() - start
                verdict = decide(self.policy, snap.state, snap.changeover, waited)
                if not isinstance(verdict, Defer):
                    out = {
                        "reason": verdict.reason,
                        "deferred_s": round(waited, 3),
                        "line_state": snap.state,
                        "changeover": snap.changeover,
                    }
                    if last is not None or verdict.reason == "deadline_proceed":
                        log.info("update window open (%s) after %.1fs", verdict.reason, waited)
                    return out
                if verdict != last:
                    self._report(verdict, snap, ref, model, ctx)
                    last = verdict
                timeout = self.recheck_s
                if self.policy.deadline_s is not None and waited < self.policy.deadline_s:
                    timeout = min(timeout, self.policy.deadline_s - waited)
                self.board.wait_change(version, max(0.01, timeout))
        finally:
            with self._lock:
                self.waiting = False

    def _report(self, verdict: Defer, snap: LineSnapshot, ref: Any, model: Any, ctx: dict[str, Any]) -> None:
        allowed = sorted(self.policy.allowed_states or ())
        if verdict.reason == "state_not_allowed":
            text = f"line is in {snap.state}; waiting for {', '.join(allowed)} or a changeover"
        elif verdict.reason == "state_unknown":
            text = "line state unknown; waiting (an unknown state never opens the window)"
        else:
            text = f"still waiting after the {self.policy.deadline_s}s deadline (at_deadline = wait)"
        self.emit(
            "update.deferred",
            level="warning" if verdict.alert else "info",
            message=f"{ref.ref}: swap deferred: {text}",
            model=model,
            data={
                "reason": verdict.reason,
                "alert": verdict.alert,
                "line_state": snap.state,
                "changeover": snap.changeover,
                "allowed_states": allowed,
                "deadline_s": self.policy.deadline_s,
                "at_deadline": self.policy.at_deadline,
                "name": ref.name,
                "version": ref.version,
            },
            **ctx,
        )


class RobotSide:
    """What :func:`attach_robot_side` built, for status and shutdown."""

    def __init__(self, board: LineStateBoard) -> None:
        self.board = board
        self.outputs: list[Any] = []
        self.gate: WindowGate | None = None
        self._last_bad: bytes | None = None

    def stop(self) -> None:
        for out in self.outputs:
            try:
                out.stop()
            except Exception:
                log.exception("stopping a local output failed")


def _line_sink(side: RobotSide, emit: Emit, source: str) -> Callable[[bytes], None]:
    def take(payload: bytes) -> None:
        try:
            reading = parse_line_state(payload)
        except LineStateError as exc:
            side.board.set_unknown(source)
            if payload != side._last_bad:  # a source repeating one bad value is one event, not a flood
                side._last_bad = payload
                emit(
                    "line.state",
                    level="warning",
                    message=f"unreadable line state from {source}: {exc}; state is now unknown",
                    data={
                        "reason": exc.reason,
                        "source": source,
                        "value": payload[:80].decode(errors="replace"),
                        "state": UNKNOWN,
                    },
                )
            return
        side._last_bad = None
        side.board.set(reading, source)

    return take


def _start_output(agent: Any, side: RobotSide, output: Any, kind: str, where: str) -> None:
    try:
        output.start()
    except LocalOutputError as exc:
        agent.emit_event(
            "error",
            level="error",
            message=f"{kind} output not started: {exc}; serving continues without it",
            data={"reason": f"local_output.{exc.reason}", "output": kind, "where": where},
        )
        return
    side.outputs.append(output)
    agent.outputs.append(output)
    agent.closers.append(output.stop)


def attach_robot_side(agent: Any, config: Any, updater: Any | None = None) -> RobotSide:
    """Wire local outputs, line-state sources and the update window into ``agent``; see the module."""
    board = LineStateBoard()
    side = RobotSide(board)
    emit = agent.emit_event

    def on_change(old: LineSnapshot, new: LineSnapshot) -> None:
        if new.state == UNKNOWN and not new.changeover:
            return  # reported with its reason by the sink
        emit(
            "line.state",
            message=f"line {old.state} → {new.state}" + (" (changeover)" if new.changeover else ""),
            data={
                "state": new.state,
                "changeover": new.changeover,
                "previous": old.state,
                "source": new.source,
            },
        )

    board.add_listener(on_change)
    line = config.line
    if line.source == "mqtt":
        topic = line.mqtt_topic or Topics(config.broker.topic_root).device(config.device_id, "line")
        subscribe = getattr(agent.publisher, "subscribe", None)
        if subscribe is None:
            raise ConfigError(
                "line.source: this publisher cannot subscribe to a line topic", field="line.source"
            )
        sink = _line_sink(side, emit, f"mqtt:{topic}")
        subscribe(topic, lambda _topic, payload: sink(payload))
    if line.source == "opcua":
        from edge_agent.line_state_opcua import OpcUaLineSource
        from edge_agent.opcua_server import require_asyncua

        require_asyncua()
        where = f"opcua:{line.opcua_url}#{line.opcua_node}"
        take = _line_sink(side, emit, where)
        down = [False]  # one event per outage, not one per retry

        def on_value(payload: bytes) -> None:
            down[0] = False
            take(payload)

        def on_unreachable(why: str) -> None:
            side.board.set_unknown(where)
            if not down[0]:
                down[0] = True
                emit(
                    "line.state",
                    level="warning",
                    message=f"line state node unreachable ({why}); state is unknown until it answers",
                    data={"reason": "source_unreachable", "source": where, "state": UNKNOWN, "error": why},
                )

        reader = OpcUaLineSource(
            str(line.opcua_url),
            str(line.opcua_node),
            changeover_node=line.opcua_changeover_node,
            poll_s=line.opcua_poll_s,
            on_value=on_value,
            on_unreachable=on_unreachable,
        )
        reader.start()
        side.outputs.append(reader)
        agent.closers.append(reader.stop)
    on_line = _line_sink(side, emit, "local") if line.source == "local" else None
    if line.source == "local" and config.local_output.socket_path is None:
        raise ConfigError('line.source = "local" needs local_output.socket_path', field="line.source")

    lo = config.local_output
    if lo.socket_path is not None:
        _start_output(
            agent,
            side,
            LocalSocketOutput(
                lo.socket_path,
                mode=lo.socket_mode,
                max_clients=lo.max_clients,
                client_buffer_bytes=lo.client_buffer_bytes,
                queue_size=lo.queue_size,
                on_line=on_line,
            ),
            "socket",
            str(lo.socket_path),
        )
    if config.opcua.enabled:
        from edge_agent.opcua_server import OpcUaOutput, require_asyncua

        require_asyncua()  # a missing extra is a config error at start, not a serving-time surprise

        def opcua_state() -> dict[str, Any]:
            st = agent.state()
            model = st.active_model
            return {
                "serving": agent.healthy(),
                "probation": st.probation,
                "model": f"{model.name}@{model.version}" if model else "",
                "provider": st.execution_provider,
                "line_state": board.snapshot().state,
            }

        _start_output(agent, side, OpcUaOutput(config.opcua, opcua_state), "opcua", config.opcua.endpoint)

    if updater is not None and line.allowed_states is not None:
        side.gate = WindowGate(
            WindowPolicy(
                allowed_states=frozenset(line.allowed_states),
                changeover_allowed=line.changeover_allowed,
                deadline_s=line.deadline_s,
                at_deadline=line.at_deadline,
            ),
            board,
            emit,
        )
        updater.window_gate = side.gate

    def status() -> dict[str, Any]:
        snap = board.snapshot()
        return {
            "line_state": snap.state,
            "line_changeover": snap.changeover,
            "update_deferred": bool(side.gate is not None and side.gate.waiting),
            "local_outputs": {
                type(o).__name__: {
                    "queue_dropped": o.queue.dropped,
                    **(
                        {"clients": o.clients, "clients_dropped": o.clients_dropped}
                        if hasattr(o, "clients")
                        else {}
                    ),
                }
                for o in side.outputs
                if hasattr(o, "queue")
            },
        }

    agent.status_extras.append(status)
    agent.robot_side = side
    return side
