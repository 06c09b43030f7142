"""An OPC UA server in the agent: what a PLC integrator expects to find (needs the ``opcua`` extra).

A small information model in the spirit of OPC 40100 (Machine Vision), under namespace
``urn:lineside:vision``::

    Objects/Lineside                         (object; emits the result events)
        Result        LinesideResult         the latest result as ONE structured value:
                                             DecisionId, FrameId, Label, Confidence, WidthMm,
                                             HeightMm, ModelName, ModelVersion, Timestamp
        ResultCount   UInt64                 results since start (coalesced by subscriptions:
                                             do not count decisions with it, use the events)
        Serving       Boolean                the inference loop is alive
        Probation     Boolean                the serving model is on probation
        Model         String                 name@version serving now
        Provider      String                 ONNX Runtime execution provider
        LineState     String                 the line's state as the agent knows it
    LinesideResultEventType (BaseEventType)  one event per decision, with the same fields as
                                             properties: a subscribed client sees every decision

Security as OPC UA defines it (``[opcua]`` in the config): anonymous access is off unless
``allow_anonymous``; a user name and password (``password_file``); with ``certificate`` and
``private_key`` the Basic256Sha256 Sign / SignAndEncrypt policies. ``security_policies`` lists
the endpoints offered; "None" (no signing) only when you list it.

Threads: asyncua runs an asyncio loop, here on its own thread. The inference thread crosses in one
place, :meth:`OpcUaOutput.offer`: a bounded drop-oldest queue and a thread-safe wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from edge_agent.local_output import DecisionQueue
from lineside_common.errors import ConfigError, LocalOutputError

log = logging.getLogger(__name__)

NAMESPACE = "urn:lineside:vision"
StateFn = Callable[[], dict[str, Any]]


def require_asyncua() -> None:
    """ConfigError (one clear line) when OPC UA is enabled but the extra is not installed."""
    try:
        import asyncua  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "opcua.enabled: the OPC UA server needs the 'opcua' extra (pip install 'lineside[opcua]')",
            field="opcua.enabled",
        ) from exc


class _Users:
    """One configured user name and password (constant-time compare)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def get_user(
        self, iserver: Any, username: Any = None, password: Any = None, certificate: Any = None
    ) -> Any:
        import hmac

        from asyncua.crypto.permission_rules import User, UserRole

        if username is None:  # anonymous: only offered when allow_anonymous
            return User(role=UserRole.User)
        if hmac.compare_digest(str(username), self.username) and hmac.compare_digest(
            str(password or ""), self.password
        ):
            return User(role=UserRole.User, name=username)
        return None


class OpcUaOutput:
    """Serves results, result events and agent state over OPC UA; see the module docstring."""

    def __init__(self, config: Any, state_fn: StateFn) -> None:
        self.config = config
        self.state_fn = state_fn
        self.queue = DecisionQueue(config.queue_size)
        self.events_sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- any thread
    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server; LocalOutputError (reason) when it cannot serve."""
        require_asyncua()
        c = self.config
        if not c.allow_anonymous and c.username is None and c.certificate is None:
            raise ConfigError(
                "opcua: anonymous access is off: set allow_anonymous = true, or username and"
                " password_file, or certificate and private_key",
                field="opcua",
            )
        self._thread = threading.Thread(target=self._thread_main, name="opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise LocalOutputError(f"opcua: server did not start in {timeout_s:g}s", reason="timeout")
        if self._error is not None:
            raise LocalOutputError(
                f"opcua: cannot serve {c.endpoint}: {self._error}", reason="bind"
            ) from self._error

    def offer(self, decision: Any) -> None:
        """Inference thread: never blocks."""
        self.queue.put(decision)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(wake.set)

    def stop(self) -> None:
        self._stop.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the asyncio thread
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); after start, logged
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("OPC UA server failed")

    async def _main(self) -> None:
        from asyncua import Server, ua
        from asyncua.common.structures104 import new_struct, new_struct_field

        c = self.config
        password = None
        if c.username is not None:
            if c.password_file is None:
                raise ConfigError("opcua.password_file: required with opcua.username", field="opcua")
            password = Path(c.password_file).read_text().strip()
        users = (
            cast(Any, _Users(c.username, password or "")) if c.username else None
        )  # duck-typed UserManager
        server = Server(user_manager=users)
        await server.init()
        server.set_endpoint(c.endpoint)
        server.set_server_name("Lineside edge agent")
        policies = {
            "None": ua.SecurityPolicyType.NoSecurity,
            "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
            "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        }
        server.set_security_policy([policies[p] for p in c.security_policies])
        tokens: list[Any] = []
        if c.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if c.username is not None:
            tokens.append(ua.UserNameIdentityToken)
        if c.certificate is not None:
            tokens.append(ua.X509IdentityToken)
            await server.load_certificate(str(c.certificate))
            await server.load_private_key(str(c.private_key))
        server.set_identity_tokens(tokens)
        idx = await server.register_namespace(NAMESPACE)

        struct_node, _ = await new_struct(
            server,
            idx,
            "LinesideResult",
            [
                new_struct_field("DecisionId", ua.VariantType.String),
                new_struct_field("FrameId", ua.VariantType.Int64),
                new_struct_field("Label", ua.VariantType.String),
                new_struct_field("Confidence", ua.VariantType.Double),
                new_struct_field("WidthMm", ua.VariantType.Double),
                new_struct_field("HeightMm", ua.VariantType.Double),
                new_struct_field("ModelName", ua.VariantType.String),
                new_struct_field("ModelVersion", ua.VariantType.String),
                new_struct_field("Timestamp", ua.VariantType.DateTime),
            ],
        )
        await server.load_data_type_definitions()
        result_cls = ua.LinesideResult  # type: ignore[attr-defined]  # made by load_data_type_definitions
        etype = await server.create_custom_event_type(
            idx,
            "LinesideResultEventType",
            ua.ObjectIds.BaseEventType,
            [
                ("DecisionId", ua.VariantType.String),
                ("FrameId", ua.VariantType.Int64),
                ("Label", ua.VariantType.String),
                ("Confidence", ua.VariantType.Double),
                ("WidthMm", ua.VariantType.Double),
                ("HeightMm", ua.VariantType.Double),
                ("ModelName", ua.VariantType.String),
                ("ModelVersion", ua.VariantType.String),
            ],
        )
        obj = await server.nodes.objects.add_object(idx, "Lineside")
        result = await obj.add_variable(
            idx,
            "Result",
            ua.Variant(result_cls(), ua.VariantType.ExtensionObject),
            datatype=struct_node.nodeid,
        )
        count = await obj.add_variable(idx, "ResultCount", ua.Variant(0, ua.VariantType.UInt64))
        state_nodes = {
            "serving": await obj.add_variable(idx, "Serving", False),
            "probation": await obj.add_variable(idx, "Probation", False),
            "model": await obj.add_variable(idx, "Model", ""),
            "provider": await obj.add_variable(idx, "Provider", ""),
            "line_state": await obj.add_variable(idx, "LineState", "unknown"),
        }
        gen = await server.get_event_generator(etype, obj.nodeid)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        total = 0
        async with server:
            self._ready.set()
            log.info("OPC UA server on %s", c.endpoint)
            last_state: dict[str, Any] = {}
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                self._wake.clear()
                items = self.queue.drain()
                for d in items:
                    name, _, version = d.model.partition("@")
                    dims = d.dimensions_mm or (0.0, 0.0)
                    label = d.label if d.finite else ""
                    gen.event.DecisionId = d.decision_id
                    gen.event.FrameId = d.frame_id
                    gen.event.Label = label
                    gen.event.Confidence = float(d.confidence)
                    gen.event.WidthMm = float(dims[0])
                    gen.event.HeightMm = float(dims[1])
                    gen.event.ModelName = name
                    gen.event.ModelVersion = version
                    await gen.trigger(message=f"{label} {d.confidence:.3f}")
                    self.events_sent += 1
                if items:
                    d = items[-1]
                    name, _, version = d.model.partition("@")
                    dims = d.dimensions_mm or (0.0, 0.0)
                    total += len(items)
                    await result.write_value(
                        ua.Variant(
                            result_cls(
                                DecisionId=d.decision_id,
                                FrameId=d.frame_id,
                                Label=d.label if d.finite else "",
                                Confidence=float(d.confidence),
                                WidthMm=float(dims[0]),
                                HeightMm=float(dims[1]),
                                ModelName=name,
                                ModelVersion=version,
                                Timestamp=datetime.fromtimestamp(d.timestamp, UTC),
                            ),
                            ua.VariantType.ExtensionObject,
                        )
                    )
                    await count.write_value(ua.Variant(total, ua.VariantType.UInt64))
                state = self.state_fn()
                for key, node in state_nodes.items():
                    if key in state and state[key] != last_state.get(key):
                        await node.write_value(state[key])
                last_state = state
