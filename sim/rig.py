"""The one line rig: what the demo, the tests' LineRig and the benchmarks build a line from.

A line is TUF keys, a ``fleet serve`` process and ``edge-agent`` processes, each with a config
file. Every place that starts one builds these pieces here, so a change to the agent's config
schema or to ``fleet serve``'s flags is made once: ``agent_config_toml`` renders an agent's
config, ``fleet_serve_argv`` / ``edge_agent_run_argv`` are the real command lines,
``server_healthy`` and ``wait_until`` are how a starter knows the line is up. Starting and
stopping the processes is ``sim.procs`` (the demo, the benchmarks) or the tests' own process
fixtures (which tests poke at); what the processes are is decided here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sim.procs import console_script

T = TypeVar("T")

# A TOML value as the agent's config takes it; a nested mapping is a sub-table ([broker.tls]).
TomlValue = str | int | float | bool | Path | Sequence[Any] | Mapping[str, Any] | None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_table(name: str, table: Mapping[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    subtables: list[str] = []
    for key, value in table.items():
        if value is None:
            continue  # None is not TOML: leave the key out and the agent's default stands
        if isinstance(value, Mapping):
            subtables += ["", *_toml_table(f"{name}.{key}", value)]
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines + subtables


def agent_config_toml(
    *,
    device_id: str,
    state_dir: Path,
    source: Mapping[str, Any],
    broker: Mapping[str, Any],
    bundle: Path | None = None,
    device_class: str | None = None,
    **sections: Mapping[str, Any] | None,
) -> str:
    """An ``edge-agent`` config file's text (the schema is ``edge_agent.config.AgentConfig``).

    ``source`` and ``broker`` are the ``[source]`` and ``[broker]`` tables; every other keyword
    (``telemetry``, ``updates``, ``shadow``, ``samples``...) is a table of that name, in the order
    given; a nested mapping is a sub-table, and a None value (or table) is left out.
    """
    top: dict[str, Any] = {"device_id": device_id, "device_class": device_class, "state_dir": state_dir}
    top["bundle"] = bundle
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items() if v is not None]
    tables: dict[str, Mapping[str, Any] | None] = {"source": source, "broker": broker, **sections}
    for name, table in tables.items():
        if table is not None:
            lines += ["", *_toml_table(name, table)]
    return "\n".join(lines) + "\n"


def write_agent_config(path: Path, **config: Any) -> Path:
    """Write ``agent_config_toml(**config)`` to ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(agent_config_toml(**config))
    return path


def make_keys(out: Path) -> Path:
    """A fresh set of TUF keys (root, targets offline; snapshot, timestamp online) in ``out``."""
    from fleet_server.keys import init_keys

    init_keys(out)
    return out


def fleet_serve_argv(
    *,
    data_dir: Path,
    port: int,
    online_keys: Path,
    broker_url: str | None = None,
    embedded_broker_port: int | None = None,
    database_url: str | None = None,
    verbose: bool = False,
    fleet: Sequence[str] | None = None,
) -> list[str]:
    """The command line of ``fleet serve`` on 127.0.0.1:``port``: with an external broker
    (``broker_url``) or its embedded one on 127.0.0.1:``embedded_broker_port``."""
    if (broker_url is None) == (embedded_broker_port is None):
        raise ValueError("give exactly one of broker_url and embedded_broker_port")
    argv = [*(fleet or console_script("fleet")), *(["-v"] if verbose else []), "serve"]
    argv += ["--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", "--online-keys", str(online_keys)]
    if broker_url is not None:
        argv += ["--broker", broker_url]
    else:
        argv += ["--embedded-broker-listen", f"127.0.0.1:{embedded_broker_port}"]
    if database_url:
        argv += ["--database-url", database_url]
    return argv


def edge_agent_run_argv(config: Path, *, edge_agent: Sequence[str] | None = None) -> list[str]:
    """The command line of ``edge-agent run`` with ``config``."""
    return [*(edge_agent or console_script("edge-agent")), "run", "--config", str(config)]


def server_healthy(url: str, *, require_mqtt: bool = True) -> bool:
    """Whether the fleet server at ``url`` answers ``/healthz`` (and, with ``require_mqtt``, is
    connected to its broker); False while it is not up yet."""
    import httpx

    try:
        r = httpx.get(f"{url}/healthz", timeout=2.0)
        return r.status_code == 200 and (not require_mqtt or bool(r.json().get("mqtt_connected")))
    except (httpx.HTTPError, ValueError):
        return False


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate()`` until truthy; return its value or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(interval)
