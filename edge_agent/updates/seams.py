"""What the updater needs of the world: a loaded model (:class:`Runner`) and the running agent
(:class:`Host`). The real ones are :class:`edge_agent.runtime.ModelRunner` and
:class:`edge_agent.agent.Agent`; tests use small fakes (tests/updates_support.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_agent.manifest import Manifest
from edge_agent.messages import ModelRef


class Runner(Protocol):
    """What the updater needs of a loaded model (edge_agent.runtime.ModelRunner)."""

    manifest: Manifest
    bundle_dir: Path
    sha256: str
    output_names: list[str]

    def run_tensor(self, x: np.ndarray) -> list[np.ndarray]: ...

    def model_ref(self) -> ModelRef: ...

    def close(self) -> None: ...


class Host(Protocol):
    """What the updater needs of the running agent (edge_agent.agent.Agent)."""

    @property
    def runner(self) -> Any: ...

    def swap_runner(self, runner: Any, *, timeout_s: float = 10.0) -> Any: ...

    def emit_event(self, kind: Any, **kw: Any) -> Any: ...
