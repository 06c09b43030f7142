"""``fleet devices add`` registers a robot before its first connection; ``fleet devices tag`` of an
unknown robot is an error (a typo must not create a phantom device). Through a real ``fleet serve``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fleet_support import FleetServer, make_keys
from tests.mqtt import Mosquitto

pytestmark = pytest.mark.integration


def _one_line_error(cp: subprocess.CompletedProcess[str], status: int) -> None:
    assert cp.returncode == 1, (cp.stdout, cp.stderr)
    assert cp.stderr.count("\n") == 1 and cp.stderr.startswith(f"error: {status}:"), cp.stderr


def test_devices_add_then_tag(tmp_path: Path, mosquitto: Mosquitto) -> None:
    server = FleetServer(tmp_path, mosquitto.url, make_keys(tmp_path)).start()
    try:
        _one_line_error(server.cli("devices", "tag", "robot-07", "--group", "line-3", check=False), 404)
        assert server.cli_json("devices", "list") == []

        added = server.cli_json("devices", "add", "robot-07", "--group", "line-3", "--tags", "new,north")
        assert (added["device_id"], added["group"], added["tags"]) == ("robot-07", "line-3", ["new", "north"])
        _one_line_error(server.cli("devices", "add", "robot-07", check=False), 409)

        listed = server.cli_json("devices", "list", "--group", "line-3")
        assert [(d["device_id"], d["online"]) for d in listed] == [("robot-07", False)]
        tagged = server.cli_json("devices", "tag", "robot-07", "--tags", "canary")
        assert (tagged["group"], tagged["tags"]) == ("line-3", ["canary"])
    finally:
        server.stop()
