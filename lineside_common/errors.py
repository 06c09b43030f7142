"""Every Lineside error, by cause: one hierarchy for the agent, the server, training and the simulators.

    LinesideError
    ├── UpdateRefusedError         an update refused or abandoned for a reason of its own (event kind)
    ├── UntrustedInputError        the input can't be trusted or is malformed: reject it, never crash
    │   ├── ManifestError          manifest.json fails its schema or its own rules
    │   ├── IncompatibleModelError valid, but not for this device / agent version
    │   ├── MessageError           an MQTT payload that does not parse or validate
    │   ├── VerificationError      TUF verification failed (signature, version, expiry, hash, length)
    │   ├── SelftestError          the model does not reproduce selftest.npz on this device
    │   └── LineStateError         a line-state value that is not a known PackML-like state
    ├── TransportError             the network or broker failed; retry later
    │   └── FetchError             downloading metadata or a target failed
    └── LocalError                 something on this machine is wrong
        ├── ConfigError            the config file or a flag is invalid (names the field)
        ├── SourceError            a frame source cannot be opened or read
        │   └── SourceLostError    a live source went away (reconnect with backoff)
        ├── ModelLoadError         ONNX Runtime could not load or run the model
        ├── ProviderError          an execution provider failed to initialise
        ├── StoreError             the model store is missing, corrupt or out of space
        └── LocalOutputError       a local decision output (socket, OPC UA server) cannot start

    LinesideError (the fleet server's requests; block at the end of this file)
    └── FleetError                 a request the fleet server cannot do as asked; ``reason`` says why
        ├── NotFoundError          no such thing (also a LookupError): HTTP 404
        ├── ConflictError          it conflicts with the current state: HTTP 409
        ├── SampleError            (fleet_server.samples) a sample upload the store refuses
        └── LabelError             (fleet_server.labels) a label or import row that cannot be used

Foreign errors (onnxruntime, paho, tuf, OSError) are translated at the boundary
with ``raise OurError(...) from exc``.

Every error carries a ``reason``: the typed code that events and ``--json`` failures report and
that callers branch on (never the message). A class without a code of its own gets its name
(``FetchError`` → ``fetch``); a raise site may give a finer one (``StoreError(reason="disk_full")``).
"""

from __future__ import annotations

from typing import Literal


class LinesideError(Exception):
    """Base of every Lineside error; ``reason`` is its typed code (see the module docstring)."""

    reason: str = "lineside"

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if "reason" not in cls.__dict__:
            cls.reason = cls.__name__.removesuffix("Error").lower() or "error"

    def __init__(self, *args: object, reason: str | None = None) -> None:
        super().__init__(*args)
        if reason is not None:
            self.reason = reason


class UpdateRefusedError(LinesideError):
    """An update refused or abandoned for a reason of its own: not configured, too large, no
    release in a directory, cancelled while deferred, no inference loop to shadow.

    ``kind`` is the event it is reported as (``update.rejected`` or ``update.failed``); ``data``
    the facts behind the message.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        kind: Literal["update.rejected", "update.failed"] = "update.rejected",
        data: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.kind = kind
        self.data = dict(data or {})


class UntrustedInputError(LinesideError):
    """Input that cannot be trusted: reject it, report it, carry on."""


class ManifestError(UntrustedInputError):
    """manifest.json does not satisfy its schema or rules.

    ``reason``: ``manifest`` (invalid) or ``unsupported`` (a newer schema than this agent reads).
    """

    def __init__(self, message: str, *, field: str | None = None, reason: str = "manifest") -> None:
        super().__init__(message, reason=reason)
        self.field = field


class IncompatibleModelError(UntrustedInputError):
    """A valid bundle that this device must not run (device class, agent version, downgrade)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)


class MessageError(UntrustedInputError):
    """An MQTT payload that does not parse or validate."""

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic


class UnknownCommandFieldError(MessageError):
    """A command (with a ``cmd_id``) carrying fields this agent does not know: refused, answered."""

    def __init__(
        self, message: str, *, topic: str | None, cmd_id: str, command_type: str, fields: tuple[str, ...]
    ) -> None:
        super().__init__(message, topic=topic)
        self.cmd_id = cmd_id
        self.command_type = command_type
        self.fields = fields


class VerificationError(UntrustedInputError):
    """TUF verification failed: signatures, versions, expiry, hashes or lengths."""


class SelftestError(UntrustedInputError):
    """The model's outputs on selftest.npz are outside tolerance on this device."""

    def __init__(self, message: str, *, max_abs_diff: float | None = None) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


class LineStateError(UntrustedInputError):
    """A line-state message we cannot read; ``reason`` is ``not_json``, ``bad_value`` or ``bad_shape``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)


class TransportError(LinesideError):
    """The network or the broker failed; the operation may succeed later."""


class FetchError(TransportError):
    """Downloading metadata or a target failed."""


class LocalError(LinesideError):
    """Something on this machine is wrong: config, files, devices."""


class ConfigError(LocalError):
    """The configuration is invalid; ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SourceError(LocalError):
    """A frame source cannot be opened or read."""


class SourceLostError(SourceError):
    """A live frame source went away; the caller reconnects with backoff."""


class ModelLoadError(LocalError):
    """ONNX Runtime could not load or run the model (``reason`` ``load``, as update events say)."""

    reason = "load"


class ProviderError(LocalError):
    """An execution provider failed to initialise."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message)
        self.provider = provider


class StoreError(LocalError):
    """The model store is missing, corrupt or out of space.

    ``reason``: ``disk_full`` (no space or quota left) or ``store`` (anything else).
    """


class LocalOutputError(LocalError):
    """A local output cannot start; ``reason`` is e.g. ``socket_path``, ``bind``, ``missing_extra``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)


class ShadowCandidateError(StoreError):
    """A side-loaded shadow candidate's file changed at rest since it was verified (``file``)."""

    def __init__(self, message: str, *, file: str) -> None:
        super().__init__(message)
        self.file = file


# -- the fleet server's requests ----------------------------------------------------------------
# Callers (the HTTP API) branch on the type and on ``reason``, never on the message's text.


class FleetError(LinesideError):
    """A request the fleet server cannot do as asked; ``reason`` is a short code, ``field`` the
    request field at fault (or None)."""

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


class NotFoundError(FleetError, LookupError):
    """No such thing; ``reason`` says which kind (``unknown_rollout``)."""

    def __init__(self, message: str, *, reason: str = "not_found", field: str | None = None) -> None:
        super().__init__(message, reason=reason, field=field)


class ConflictError(FleetError):
    """The request conflicts with the current state; ``reason`` e.g. ``devices_busy`` (devices still
    in another active rollout)."""
