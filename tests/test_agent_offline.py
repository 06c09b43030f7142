"""Offline is explicit and real: ``[broker] offline = true`` runs the daemon with everything in the
spool; a config with no ``url`` and no ``offline`` is one config error line, never a silent
connection to whatever listens on ``127.0.0.1:1883`` (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.service import read_status
from lineside_common.errors import ConfigError
from tests.conftest import REPO, AgentProcess, edge_agent_command
from tests.mqtt import wait_until

BASE = 'device_id = "off-1"\n[source]\nuri = "x"\n'


def _cfg(tmp: Path, text: str) -> Path:
    p = tmp / "agent.toml"
    p.write_text(text)
    return p


def test_no_url_and_no_offline_is_a_config_error_at_run(tmp_path: Path) -> None:
    c = load_config(_cfg(tmp_path, BASE))  # other commands (status, install) need no broker
    with pytest.raises(ConfigError) as err:
        c.broker.check_for_run()
    assert err.value.field == "broker.url"


def test_offline_true_needs_no_url_and_refuses_one(tmp_path: Path) -> None:
    load_config(_cfg(tmp_path, BASE + "[broker]\noffline = true\n")).broker.check_for_run()
    with pytest.raises(ConfigError) as err:
        load_config(_cfg(tmp_path, BASE + '[broker]\noffline = true\nurl = "mqtt://h:1883"\n'))
    assert err.value.field == "broker"
    # --broker on the command line wins over offline = true in the file.
    c = load_config(
        _cfg(tmp_path, BASE + "[broker]\noffline = true\n"),
        {"broker.url": "mqtt://h:1", "broker.offline": False},
    )
    assert c.broker.url == "mqtt://h:1" and not c.broker.offline


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from models.synthetic import make_bundle

    tmp = tmp_path_factory.mktemp("offline")
    rec = tmp / "rec"
    subprocess.run([str(Path(sys.executable).parent / "edge-sim"), "record", "--out", str(rec), "--frames", "20",
                    "--fps", "30", "--seed", "3"], check=True, capture_output=True, cwd=REPO)  # fmt: skip
    return make_bundle(tmp / "b"), rec


@pytest.mark.integration
def test_run_without_a_broker_url_fails_in_one_line(tmp_path: Path, served: tuple[Path, Path]) -> None:
    bundle, rec = served
    cfg = _cfg(tmp_path, f'device_id = "off-1"\nstate_dir = "{tmp_path / "s"}"\nbundle = "{bundle}"\n'
                         f'[source]\nuri = "{rec}"\n')  # fmt: skip
    r = subprocess.run([*edge_agent_command(), "run", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60, check=False)  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "broker.url" in r.stderr


@pytest.mark.integration
def test_offline_true_serves_and_spools(
    tmp_path: Path, served: tuple[Path, Path], edge_agent_process: Callable[..., AgentProcess]
) -> None:
    bundle, rec = served
    state = tmp_path / "s"
    cfg = _cfg(tmp_path, f'device_id = "off-1"\nstate_dir = "{state}"\nbundle = "{bundle}"\n'
                         f'[source]\nuri = "{rec}"\nloop = true\n[broker]\noffline = true\n'
                         '[telemetry]\nwindow_s = 0.3\n')  # fmt: skip
    edge_agent_process(cfg)
    wait_until(lambda: (read_status(state) or {}).get("spool_depth", 0) >= 2, 30, what="spooled windows")
    st = read_status(state)
    assert st is not None and st["running"] and st["frames"] > 0 and st["broker_connected"] is False
