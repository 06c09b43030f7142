"""sim/rig.py: the agent config every rig writes is one the agent loads as meant, and the
`fleet serve` command line names exactly one broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import load_config
from sim.rig import agent_config_toml, fleet_serve_argv, write_agent_config


def test_a_rendered_config_loads_with_every_value_where_it_was_put(tmp_path: Path) -> None:
    odd = tmp_path / 'a "quoted" dir'  # quotes and spaces survive as TOML strings
    cfg = load_config(
        write_agent_config(
            tmp_path / "agent.toml",
            device_id="robot-1",
            device_class="arm-7",
            state_dir=odd / "state",
            source={"uri": odd / "stream", "loop": True, "realtime": False, "fps": 12.5},
            broker={
                "url": "mqtts://127.0.0.1:8883",
                "username": "robot-1",
                "password_file": None,  # left out: the default stands
                "reconnect_min_s": 0.2,
                "tls": {"enabled": True, "ca_file": odd / "ca.crt"},
            },
            telemetry={"window_s": 3.0},
            shadow={"every_n": 1},
            updates=None,
        )
    )
    assert cfg.device_id == "robot-1" and cfg.device_class == "arm-7"
    assert cfg.state_dir == odd / "state"
    assert cfg.source.uri == str(odd / "stream") and cfg.source.loop and not cfg.source.realtime
    assert cfg.source.fps == 12.5
    assert cfg.broker.username == "robot-1" and cfg.broker.password_file is None
    assert cfg.broker.reconnect_min_s == 0.2
    assert cfg.broker.tls.enabled and cfg.broker.tls.ca_file == odd / "ca.crt"
    assert cfg.telemetry.window_s == 3.0 and cfg.shadow.every_n == 1
    assert cfg.updates is None


def test_a_value_with_no_toml_form_is_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        agent_config_toml(device_id="r", state_dir=Path("s"), source={"uri": object()}, broker={})


def test_fleet_serve_names_exactly_one_broker(tmp_path: Path) -> None:
    common = {"data_dir": tmp_path, "port": 8080, "online_keys": tmp_path / "keys", "fleet": ["fleet"]}
    argv = fleet_serve_argv(**common, broker_url="mqtt://127.0.0.1:1883")  # type: ignore[arg-type]
    assert argv[:2] == ["fleet", "serve"] and argv[argv.index("--broker") + 1] == "mqtt://127.0.0.1:1883"
    argv = fleet_serve_argv(**common, embedded_broker_port=1884)  # type: ignore[arg-type]
    assert argv[argv.index("--embedded-broker-listen") + 1] == "127.0.0.1:1884" and "--broker" not in argv
    for brokers in ({}, {"broker_url": "mqtt://h:1", "embedded_broker_port": 1}):
        with pytest.raises(ValueError, match="exactly one"):
            fleet_serve_argv(**common, **brokers)  # type: ignore[arg-type]
