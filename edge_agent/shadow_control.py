"""Which model runs in shadow on this device, and what probation concludes from it.

The updater's side of :mod:`edge_agent.shadow`: it starts a candidate (shadow deploy), keeps
the previous model as the reverse shadow of a probation, stops either, and turns the shadow
blocks of probation's telemetry windows into verdicts (:mod:`edge_agent.agreement`).

At most one shadow runs at a time; starting one stops the other. A shadow does not survive a
restart of the agent: a shadow candidate lives in ``staging/`` (deleted at start-up), and a
probation resumed after a restart runs without its reverse shadow — its verdict then rests on
the health gates alone and says so (``agreement: not_measured``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.agreement import judge_agreement, merge_blocks
from edge_agent.manifest import Manifest
from edge_agent.messages import Telemetry
from edge_agent.shadow import Role, ShadowRunner
from edge_agent.verdicts import Verdict

log = logging.getLogger(__name__)


class ShadowControl:
    """Starts and stops the host's shadow runner. ``host`` is the running Agent (or None: no shadow)."""

    def __init__(self, *, every_n: int = 3, max_cpu_share: float = 0.25, nice: int = 10) -> None:
        self.host: Any = None
        self.every_n = every_n
        self.max_cpu_share = max_cpu_share
        self.nice = nice
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.host is not None and hasattr(self.host, "set_shadow")

    def current(self) -> ShadowRunner | None:
        return getattr(self.host, "shadow", None) if self.available else None

    def start(
        self,
        runner: Any,
        *,
        role: Role,
        confident: float = 0.7,
        on_close: Callable[[], None] | None = None,
    ) -> ShadowRunner | None:
        """Run ``runner`` in shadow beside the host's serving model; None when there is no host."""
        if not self.available:
            runner.close()
            if on_close is not None:
                on_close()
            return None
        shadow = ShadowRunner(
            runner,
            self.host.runner,
            role=role,
            every_n=self.every_n,
            max_cpu_share=self.max_cpu_share,
            nice=self.nice,
            confident=confident,
            on_close=on_close,
            sampler=getattr(self.host, "sampler", None),
        )
        with self._lock:
            old = self.host.set_shadow(shadow)
        if old is not None:
            old.close()
        return shadow

    def stop(self, role: Role | None = None) -> ShadowRunner | None:
        """Stop the running shadow (only if it has ``role``, when given); return what was stopped."""
        if not self.available:
            return None
        with self._lock:
            cur = self.host.shadow
            if cur is None or (role is not None and cur.role != role):
                return None
            self.host.set_shadow(None)
        cur.close()
        return cur


def probation_agreement(
    windows: Sequence[Telemetry], manifest: Manifest, active_sha256: str
) -> tuple[list[Verdict], dict[str, Any]] | None:
    """Verdicts of probation's reverse shadow over ``windows``; None when no window carries one."""
    blocks = [
        w.shadow.model_dump()
        for w in windows
        if w.shadow is not None
        and w.shadow.role == "baseline"
        and (w.shadow.candidate is None or w.shadow.candidate.sha256 in ("", active_sha256))
    ]
    if not blocks:
        return None
    merged = merge_blocks(blocks)
    gates = manifest.agreement
    verdicts = judge_agreement(
        merged,
        min_agreement=gates.min_agreement,
        min_frames=gates.min_frames,
        confidence=gates.confidence,
        max_dimension_diff_mm=gates.max_dimension_diff_mm,
    )
    return verdicts, merged
