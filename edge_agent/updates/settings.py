"""The updater's settings: one frozen object, built from ``[updates]`` in one place.

:class:`UpdaterSettings` carries ``[updates]``'s own field names (:class:`edge_agent.config.
UpdatesConfig`, validated there once) plus the two facts about this device the section does not
hold; :func:`settings_from_config` passes the validated section through whole, and the TUF client
takes the same object as its metadata limits (:class:`edge_agent.trust.MetadataLimits`).
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import __version__

log = logging.getLogger(__name__)

FAULT_POINTS = (
    "after_download",
    "mid_stage",
    "after_verify",
    "after_rename",
    "after_state_write",
    "during_probation",
)


@dataclass(frozen=True)
class UpdaterSettings:
    """Everything the updater needs from the config (see ``[updates]`` in the agent config)."""

    device_class: str = "generic"
    agent_version: str = __version__
    root_json: Path | None = None
    repository_url: str | None = None
    token_file: Path | None = None  # this device's HTTP token, read at each update (rotation)
    # Upper bounds for TUF metadata downloads (targets are bounded by their signed length).
    root_max_bytes: int = 512_000
    timestamp_max_bytes: int = 16_384
    snapshot_max_bytes: int = 2_000_000
    targets_max_bytes: int = 5_000_000
    crash_loop_threshold: int = 3
    reserve_bytes: int = 0
    swap_timeout_s: float = 10.0
    fault_point: str | None = None  # fault-injection tests only
    # A download cut by the network (FetchError) is retried from a fresh TUF session, after
    # fetch_backoff_s, doubling up to fetch_backoff_max_s; verification failures never are.
    fetch_attempts: int = 4
    fetch_backoff_s: float = 1.0
    fetch_backoff_max_s: float = 30.0
    # The largest release (sum of its signed file lengths) this device accepts, checked before
    # any target is downloaded: a signed but absurd bundle must not fill the disk or the RAM.
    max_bundle_bytes: int = 512 * 1024 * 1024


def settings_from_config(config: Any) -> UpdaterSettings:
    """UpdaterSettings from an AgentConfig (its optional, already validated ``updates`` section)."""
    up = getattr(config, "updates", None)
    section: dict[str, Any] = up.model_dump() if up is not None else {}
    return UpdaterSettings(device_class=config.device_class, **section)


def fault(settings: UpdaterSettings, point: str) -> None:
    """Kill this process with SIGKILL when ``point`` is the configured fault point (crash tests only)."""
    if settings.fault_point == point:
        log.warning("fault injection: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
