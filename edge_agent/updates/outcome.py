"""What an update command ends in (:class:`Outcome`), and which event a refused update is.

Pure: no files, no clock. Every error on the update paths carries its typed ``reason``
(:mod:`lineside_common.errors`); :func:`refusal` only decides the event kind from the error's
family — untrusted input is *rejected*, a failure of the transport or of this machine *failed* —
and never reads a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edge_agent.messages import ModelRef
from edge_agent.store_rules import BundleRef
from edge_agent.trust import UpdateVerificationError
from lineside_common.errors import (
    FetchError,
    IncompatibleModelError,
    LinesideError,
    ManifestError,
    ModelLoadError,
    SelftestError,
    StoreError,
    UpdateRefusedError,
    VerificationError,
)

OutcomeStatus = Literal[
    "installed",
    "already_active",
    "rejected",
    "failed",
    "duplicate",
    "rolled_back",
    "verified",
    "cancelled",
]
_OK: frozenset[OutcomeStatus] = frozenset(
    ("installed", "already_active", "duplicate", "rolled_back", "verified")
)

# What a refused update may raise; anything else is a bug and propagates.
REJECTING: tuple[type[LinesideError], ...] = (
    UpdateRefusedError,
    VerificationError,
    IncompatibleModelError,
    ManifestError,
    SelftestError,
)
FAILING: tuple[type[LinesideError], ...] = (FetchError, StoreError, ModelLoadError)
REFUSALS: tuple[type[Exception], ...] = (*REJECTING, *FAILING, OSError)  # OSError: TimeoutError too


@dataclass
class Outcome:
    """What an update command ended in (also returned to the CLI)."""

    status: OutcomeStatus
    message: str = ""
    model: BundleRef | None = None
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in _OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "model": self.model.to_dict() if self.model else None,
            "reason": self.reason,
            "data": self.data,
        }


def model_ref(b: BundleRef | None) -> ModelRef | None:
    """A stored bundle as the message schema names a model."""
    return ModelRef(name=b.name, version=b.version, sha256=b.sha256) if b else None


def refusal(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    """``(event kind, reason, data)`` for an update stopped by ``exc`` (one of :data:`REFUSALS`).

    ``update.rejected`` for what must not be installed, ``update.failed`` for what may succeed
    later; an OS error of no family of ours has reason ``error``.
    """
    if isinstance(exc, UpdateRefusedError):
        return exc.kind, exc.reason, exc.data
    data = dict(exc.data) if isinstance(exc, UpdateVerificationError) else {}
    if isinstance(exc, REJECTING):
        return "update.rejected", exc.reason, data
    if isinstance(exc, FAILING):
        return "update.failed", exc.reason, {}
    return "update.failed", "error", {}
