"""Commands from the fleet (``{root}/devices/{id}/cmd``): parsed, answered, dispatched on a worker thread.

``ping`` is answered here with a ``pong`` event. ``deploy``, ``rollback`` and
``capture`` go to handlers other code registers (the updater, the capture
tool); with none registered, or when a handler raises, the command is
rejected with a ``command.rejected`` event. A payload that is not a valid
command gives ``message.rejected``. Nothing here raises into the caller: the
agent never crashes on a message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge_agent.messages import (
    CaptureCommand,
    DeployCommand,
    PingCommand,
    RollbackCommand,
    parse_command,
)
from lineside_common.errors import LinesideError, MessageError, UnknownCommandFieldError

log = logging.getLogger(__name__)

AnyCommand = PingCommand | DeployCommand | RollbackCommand | CaptureCommand
CommandHandler = Callable[[Any], None]
HANDLED_TYPES = ("deploy", "rollback", "capture", "stop_shadow")
# emit(kind, level=..., message=..., cmd_id=..., rollout_id=..., data=...)
Emit = Callable[..., object]


class CommandDispatcher:
    """Accepts raw ``cmd`` payloads from any thread; parses and runs them on its own worker thread."""

    def __init__(self, emit: Emit, *, max_pending: int = 100, nice: int = 0) -> None:
        self._emit = emit
        self._nice = nice
        self._handlers: dict[str, CommandHandler] = {}
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None

    def set_handler(self, type_: str, handler: CommandHandler) -> None:
        """Register the handler for ``deploy``, ``rollback`` or ``capture``."""
        if type_ not in HANDLED_TYPES:
            raise ValueError(
                f"no handler can be registered for {type_!r} (one of {', '.join(HANDLED_TYPES)})"
            )
        self._handlers[type_] = handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout=timeout)

    def submit(self, topic: str, payload: bytes) -> None:
        """Queue a raw payload (never blocks; a flood beyond ``max_pending`` is rejected)."""
        try:
            self._queue.put_nowait((topic, payload))
        except queue.Full:
            log.warning("command queue full; rejecting a message on %s", topic)
            self._safe_emit(
                "message.rejected", level="warning", message="command queue full", data={"topic": topic}
            )

    def _run(self) -> None:
        if self._nice:
            # Updates (download, verify, self-test, building the next session) run here: on a small
            # CPU they must yield to the inference thread, or a swap stalls the line for a
            # scheduler slice. Linux threads have their own nice value; elsewhere this is a no-op.
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except (OSError, AttributeError) as exc:
                log.info("could not lower the command worker's priority: %s", exc)
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.handle(*item)

    def handle(self, topic: str, payload: bytes) -> None:
        """Parse and act on one payload, synchronously (the worker calls this; tests may too)."""
        try:
            cmd = parse_command(payload, topic)
        except UnknownCommandFieldError as exc:
            # A newer fleet's command: refuse it by its cmd_id, so the fleet knows this agent
            # cannot do it (a shadow deploy must never run as a real install).
            self._safe_emit(
                "command.rejected",
                level="warning",
                cmd_id=exc.cmd_id,
                message=str(exc),
                data={"type": exc.command_type, "reason": "unknown_fields", "fields": list(exc.fields)},
            )
            return
        except MessageError as exc:
            self._safe_emit(
                "message.rejected",
                level="warning",
                message=str(exc),
                data={"topic": topic, "bytes": len(payload)},
            )
            return
        if isinstance(cmd, PingCommand):
            self._safe_emit("pong", cmd_id=cmd.cmd_id, message="pong")
            return
        rollout_id = getattr(cmd, "rollout_id", None)
        handler = self._handlers.get(cmd.type)
        if handler is None:
            self._safe_emit(
                "command.rejected",
                level="warning",
                cmd_id=cmd.cmd_id,
                rollout_id=rollout_id,
                message=f"{cmd.type} is not supported by this agent (no handler registered)",
                data={"type": cmd.type},
            )
            return
        try:
            handler(cmd)
        except LinesideError as exc:
            self._safe_emit(
                "command.rejected",
                level="error",
                cmd_id=cmd.cmd_id,
                rollout_id=rollout_id,
                message=f"{cmd.type} failed: {exc}",
                data={"type": cmd.type, "error": type(exc).__name__},
            )
        except Exception as exc:
            log.exception("%s handler crashed", cmd.type)
            self._safe_emit(
                "command.rejected",
                level="error",
                cmd_id=cmd.cmd_id,
                rollout_id=rollout_id,
                message=f"{cmd.type} failed unexpectedly: {exc!r}",
                data={"type": cmd.type, "error": type(exc).__name__},
            )

    def _safe_emit(self, kind: str, **kw: Any) -> None:
        try:
            self._emit(kind, **kw)
        except Exception:
            log.exception("could not emit %s", kind)
