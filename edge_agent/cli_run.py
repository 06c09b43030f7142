"""``edge-agent run`` (the daemon) and ``edge-agent status`` (what the running daemon reports)."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from edge_agent.config import AgentConfig, load_config
from edge_agent.frames import FrameSource
from edge_agent.messages import DeviceState, dump
from edge_agent.runtime import ModelRunner
from edge_agent.service import SystemdNotifier, read_status, stop_on_signals, watchdog_interval_s
from edge_agent.sources import open_source
from edge_agent.spool import Spool
from lineside_common import cli as clitools
from lineside_common.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/lineside/agent.toml")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` and ``status``."""
    p = sub.add_parser(
        "run",
        help="run the agent daemon",
        description="Run the agent: read frames, run the model, publish decisions, telemetry and events "
        "over MQTT, take commands. Stops cleanly on SIGTERM/SIGINT; speaks systemd's notify protocol "
        "when started by systemd (Type=notify).",
    )
    p.add_argument(
        "--config", type=Path, default=None, help=f"agent TOML file (default {DEFAULT_CONFIG} if it exists)"
    )
    _common_flags(p)
    p.add_argument(
        "--bundle", type=Path, default=None, help="model bundle directory to serve (overrides the config)"
    )
    p.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "status",
        help="show what the running agent reports",
        description="Read the agent's status.json (written every telemetry window) and check its pid is alive. "
        "Exit code 0 when it runs, 3 when it does not.",
    )
    s.add_argument("--config", type=Path, default=None, help="agent TOML file (for its state_dir)")
    s.add_argument("--state-dir", type=Path, default=None, help="the agent's state directory")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", default=None, help="frame source: recording dir, video file, device index, stream URL"
    )
    p.add_argument(
        "--broker",
        default=None,
        help="MQTT broker URL, e.g. mqtt://127.0.0.1:1883 (required unless [broker] offline = true)",
    )
    p.add_argument("--device-id", default=None, help="this device's id")
    p.add_argument("--state-dir", type=Path, default=None, help="where spool, status and models live")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The config file (if any) with the command line's overrides."""
    path = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    overrides: dict[str, Any] = {
        "source.uri": getattr(args, "source", None),
        "broker.url": getattr(args, "broker", None),
        "device_id": getattr(args, "device_id", None),
        "state_dir": str(args.state_dir) if getattr(args, "state_dir", None) else None,
        "bundle": str(args.bundle) if getattr(args, "bundle", None) else None,
    }
    if overrides["broker.url"] is not None:
        overrides["broker.offline"] = False  # --broker on the command line wins over offline = true
    return load_config(path, overrides)


def _initial_runner(
    config: AgentConfig, on_fallback: Callable[[str, str], None] | None = None
) -> ModelRunner:
    """The model to serve at start-up: for now the bundle the config names.

    The updates side replaces this with "load the active verified bundle from the store".
    """
    if config.bundle is None:
        if config.updates is not None:
            raise ConfigError(
                "no model installed yet: side-load the first one with `edge-agent install DIR "
                '--config FILE` (a `fleet export` folder), or set bundle = "DIR"',
                field="bundle",
            )
        raise ConfigError(
            'bundle: no model bundle configured (set bundle = "DIR" or pass --bundle)', field="bundle"
        )
    return ModelRunner.load(config.bundle, inference=config.inference, on_fallback=on_fallback)


def _open_source(config: AgentConfig) -> FrameSource:
    # A live source comes bare: the agent's capture thread reconnects it (camera.lost/restored).
    return open_source(
        config.source.uri, realtime=config.source.realtime, loop=config.source.loop, fps=config.source.fps
    )


def build_agent(config: AgentConfig) -> Any:
    """The real collaborators: source, model, spool, MQTT publisher; returns an Agent."""
    from edge_agent.agent import Agent
    from edge_agent.publisher import MqttPublisher

    fallbacks: list[tuple[str, str]] = []
    on_fallback = lambda provider, reason: fallbacks.append((provider, reason))  # noqa: E731
    # With [updates]: serve the active verified bundle from the store (after crash recovery and
    # the crash-loop check); the configured bundle only while the store is still empty.
    updater = None
    runner: ModelRunner | None = None
    if config.updates is not None:
        from edge_agent.updates import daemon_updater

        updater = daemon_updater(config, on_fallback)
        runner = cast(ModelRunner | None, updater.boot())  # daemon_updater loads ModelRunners
    if runner is None:
        runner = _initial_runner(config, on_fallback)
    source = _open_source(config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    spool = Spool(config.state_dir / "spool", max_messages=config.telemetry.spool_max_messages)
    config.broker.check_for_run()
    will = dump(DeviceState(device_id=config.device_id, online=False, device_class=config.device_class))
    publisher = MqttPublisher(
        config.broker, device_id=config.device_id, client_id=config.client_id, spool=spool, will_payload=will
    )
    agent = Agent(config, source, publisher, runner, spool=spool)
    from edge_agent.robot_side import attach_robot_side

    attach_robot_side(agent, config, updater)

    from edge_agent.sampling import attach_to_agent as attach_sampling

    attach_sampling(agent)
    if updater is not None:
        from edge_agent.updates import attach_to_agent

        attach_to_agent(agent, updater)
    if agent.runtime.conflict:
        builds = ", ".join(agent.runtime.installed)
        log.warning("several onnxruntime builds are installed at once (%s): keep exactly one", builds)
        agent.emit_event(
            "runtime.conflict",
            level="warning",
            message=f"several onnxruntime builds installed at once ({builds}); keep exactly one",
            data={"installed": list(agent.runtime.installed), "serving": agent.runtime.serving},
        )
    for provider, reason in fallbacks:
        agent.emit_event(
            "provider.fallback",
            level="warning",
            message=f"{provider} could not serve; fell back",
            data={"provider": provider, "reason": reason[:500], "serving": runner.provider},
        )
    return agent


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The state dir holds the spool (telemetry, events) and the trusted TUF metadata: the
        # agent's user only (SECURITY.md; tests/test_security_secrets.py).
        if config.state_dir.stat().st_mode & 0o077:
            config.state_dir.chmod(0o700)
    except OSError as exc:
        raise ConfigError(
            f"state_dir: cannot create {config.state_dir}: {exc.strerror}", field="state_dir"
        ) from exc
    # The environment is read here, at the boundary, and nowhere deeper.
    notifier = SystemdNotifier(os.environ.get("NOTIFY_SOCKET"))
    interval = watchdog_interval_s(
        os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID"), config.watchdog_s
    )
    stop = threading.Event()
    with stop_on_signals(stop):
        agent = build_agent(config)
        log.info("agent %s starting", config.device_id)
        agent.run(stop, notifier=notifier, watchdog_interval_s=interval)
    notifier.close()
    return clitools.EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    state_dir: Path | None = args.state_dir
    if state_dir is None:
        path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
        if path is None:
            raise clitools.CommandError(
                "pass --state-dir or --config", exit_code=clitools.EXIT_USAGE, reason="usage"
            )
        from edge_agent.config import load_config as _load

        state_dir = _load(path).state_dir
    status = read_status(state_dir)
    if status is None:
        if args.json:
            clitools.print_json({"running": False, "state_dir": str(state_dir), "reason": "no_status"})
        raise clitools.CommandError(
            f"no agent has run with state dir {state_dir} (no status.json)", exit_code=3, reason="no_status"
        )
    if args.json:
        clitools.print_json(status)
    else:
        _print_status(status)
    return clitools.EXIT_OK if status.get("running") else 3


def _print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    running = status.get("running")
    table.add_row("running", "[green]yes[/]" if running else "[red]no[/]")
    model = status.get("model") or {}
    rows = [
        ("device", status.get("device_id")),
        ("pid", status.get("pid")),
        ("model", f"{model.get('name')}@{model.get('version')}" if model else "-"),
        ("provider", status.get("provider")),
        ("runtime", status.get("runtime_build")),
        ("source", f"{status.get('source')} ({status.get('source_state')})"),
        ("frames", status.get("frames")),
        ("fps", status.get("fps")),
        ("dropped", status.get("dropped")),
        ("broker", "connected" if status.get("broker_connected") else "disconnected"),
        ("spool", status.get("spool_depth")),
        ("drifting", status.get("drifting")),
        ("line", status.get("line_state", "-") + (" (changeover)" if status.get("line_changeover") else "")),
        ("swap deferred", status.get("update_deferred", False)),
        ("updated", status.get("updated_at")),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    timings = status.get("provider_timings_ms") or {}
    if timings:
        table.add_row("self-test ms", ", ".join(f"{p}: {ms}" for p, ms in timings.items()))
    if status.get("runtime_conflict"):
        installed = ", ".join(status.get("runtime_builds_installed") or [])
        table.add_row("warning", f"[red]several onnxruntime builds installed ({installed}): keep one[/]")
    if status.get("error"):
        table.add_row("error", str(status["error"]))
    Console().print(table)
