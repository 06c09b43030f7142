"""Wiring the updater into the running agent: the daemon's updater (:func:`daemon_updater`) and its
command handlers, window listener, decision meter and state message (:func:`attach_to_agent`)."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.store import ModelStore
from edge_agent.updates.seams import Runner
from edge_agent.updates.settings import settings_from_config
from edge_agent.updates.swap import DecisionMeter
from edge_agent.updates.updater import Updater

log = logging.getLogger(__name__)

STORE_SUBDIR = "models"


def store_dir(state_dir: Path) -> Path:
    """Where the model store lives under the agent's state directory."""
    return Path(state_dir) / STORE_SUBDIR


def daemon_updater(config: Any, on_fallback: Callable[[str, str], None] | None = None) -> Updater:
    """The updater a running agent uses: the store under ``state_dir``, ModelRunner with the config."""
    from edge_agent.runtime import ModelRunner

    settings = settings_from_config(config)
    store = ModelStore(store_dir(config.state_dir), reserve_bytes=settings.reserve_bytes)

    def load(bundle_dir: Path) -> Runner:
        return ModelRunner.load(bundle_dir, inference=config.inference, on_fallback=on_fallback)

    updater = Updater(store, settings, load_runner=load)
    shadow = getattr(config, "shadow", None)
    if shadow is not None:
        updater.shadows.every_n = shadow.every_n
        updater.shadows.max_cpu_share = shadow.max_cpu_share
        updater.shadows.nice = shadow.nice
    return updater


def attach_to_agent(agent: Any, updater: Updater) -> None:
    """Wire the updater into a running Agent: commands, telemetry windows, state message."""

    deploys: queue.Queue[Any] = queue.Queue()
    worker: list[threading.Thread] = []

    def run_deploys() -> None:
        # Same reason as the command worker's nice value: installs yield to inference.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), agent.config.inference.update_nice)
        while True:
            cmd = deploys.get()
            try:
                updater.deploy(cmd.name, cmd.version, cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id)
            except Exception:
                log.exception("deploy %s@%s failed", cmd.name, cmd.version)

    def deploy(cmd: Any) -> None:
        sampler = getattr(agent, "sampler", None)
        if cmd.mode != "shadow" and sampler is not None:
            # The rollout's sampling overrides, applied while this release serves (docs/samples.md).
            sampler.set_rollout_sampling(cmd.name, cmd.version, getattr(cmd, "sampling", None))
        if cmd.mode == "shadow":
            # A shadow never swaps, so it never waits for the line's update window.
            updater.deploy_shadow(cmd.name, cmd.version, cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id)
            return
        if updater.window_gate is None:
            updater.deploy(cmd.name, cmd.version, cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id)
            return
        # With an update window a deploy may wait for the line for a long time: it waits on its own
        # worker so the command worker stays free for rollbacks (never deferred) and pings. A daemon
        # thread: stopping the agent must not wait for the line (the fleet re-sends the deploy to
        # an agent that restarted while deferred).
        if not worker:
            worker.append(threading.Thread(target=run_deploys, name="updates", daemon=True))
            worker[0].start()
        deploys.put(cmd)

    def stop_shadow(cmd: Any) -> None:
        updater.stop_shadow(cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id)

    def rollback(cmd: Any) -> None:
        updater.rollback(cmd_id=cmd.cmd_id, rollout_id=cmd.rollout_id, reason=cmd.reason)

    meter = DecisionMeter()
    previous_hook = agent.on_decision
    if previous_hook is None:
        agent.on_decision = meter
    else:

        def both(decision: Any) -> None:
            previous_hook(decision)
            meter(decision)

        agent.on_decision = both
    updater.meter = meter
    updater.attach(agent)
    agent.set_command_handler("deploy", deploy)
    agent.set_command_handler("rollback", rollback)
    agent.set_command_handler("stop_shadow", stop_shadow)
    agent.add_window_listener(updater.on_window)
    agent.set_model_info(updater.model_info)
