"""Samples with real processes (issue 16): edge-agent, Mosquitto and `fleet serve`.

- Quotas are counted exactly; samples survive an agent SIGKILL and a server outage with nothing
  lost and nothing stored twice; the upload bandwidth cap holds.
- The ``capture`` command takes the next N frames within the quotas; ``capture = false`` sends
  nothing whatever the fleet asks and answers ``command.rejected`` with reason ``capture_disabled``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AgentProcess
from tests.fault_support import record
from tests.fleet_support import FleetServer, make_keys
from tests.mqtt import Collector, Mosquitto, wait_until

pytestmark = pytest.mark.integration

ROOT = "lineside/v1"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", behaviour="confident")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("rec") / "baseline", frames=90, seed=5, fps=30)


def agent_config(
    path: Path,
    *,
    device: str,
    bundle: Path,
    source: Path,
    broker: str,
    server: str,
    token: Path,
    **samples: Any,
) -> Path:
    lines = [
        f'device_id = "{device}"',
        f'state_dir = "{path.parent / ("state-" + device)}"',
        f'bundle = "{bundle}"',
        "[source]",
        f'uri = "{source}"',
        f"loop = {str(samples.pop('loop', False)).lower()}",
        # Unpaced: the replay waits for the agent instead of dropping frames on a busy machine.
        f"realtime = {str(samples.pop('realtime', True)).lower()}",
        "[broker]",
        f'url = "{broker}"',
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 1.0",
        "[telemetry]",
        "window_s = 1.0",
        "[samples]",
        f'server_url = "{server}"',
        f'token_file = "{token}"',
        "upload_backoff_s = 0.2",
        "upload_backoff_max_s = 1.0",
        "seed = 7",
    ]
    for k, v in samples.items():
        lines.append(f"{k} = {json.dumps(v)}")  # None is not TOML: leave the default out instead
    path.write_text("\n".join(lines) + "\n")
    return path


def issue_token(server: FleetServer, device: str, out: Path) -> Path:
    r = httpx.post(
        f"{server.url}/api/v1/devices/{device}/token", headers={"Authorization": f"Bearer {server.token}"}
    )
    assert r.status_code == 201, r.text
    out.write_text(r.json()["token"] + "\n")
    return out


def server_samples(server: FleetServer, device: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{server.url}/api/v1/samples",
        params={"device": device, "limit": 1000},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert r.status_code == 200, r.text
    samples: list[dict[str, Any]] = r.json()["samples"]
    return samples


def ring_ids(state: Path) -> list[str]:
    ring = state / "samples"
    return sorted(p.stem for p in ring.glob("*.json") if p.name != "quota.json") if ring.is_dir() else []


def status(state: Path) -> dict[str, Any]:
    """The agent's status.json (empty until written)."""
    try:
        out: dict[str, Any] = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return out


def test_samples_survive_an_agent_kill_and_a_server_outage_exactly_once_under_the_cap(
    mosquitto: Mosquitto,
    edge_agent_process: Callable[..., AgentProcess],
    bundle: Path,
    recording: Path,
    tmp_path: Path,
) -> None:
    device = "sampler-1"
    server = FleetServer(tmp_path, mosquitto.url, make_keys(tmp_path)).start()
    token = issue_token(server, device, tmp_path / "device.token")
    server.stop()  # the outage starts before the first sample
    rate = 16_000
    cfg = agent_config(
        tmp_path / "agent.toml", device=device, bundle=bundle, source=recording, broker=mosquitto.url,
        server=server.url, token=token, random_share=1.0, low_confidence_max=0.0,
        per_minute=1000, per_hour=7, per_day=100_000, max_side_px=320, jpeg_quality=95,
        upload_max_bytes_per_s=rate, realtime=False,
    )  # fmt: skip
    state = tmp_path / f"state-{device}"
    agent = edge_agent_process(cfg)
    wait_until(lambda: status(state).get("frames", 0) >= 90, 60, what="the whole recording served")
    # Every frame was wanted (random share 1.0); the hourly quota let exactly 7 through.
    kept = wait_until(lambda: len(ring_ids(state)) == 7 and ring_ids(state), 20, what="7 samples in the ring")
    assert status(state)["samples"]["refused_by_quota"] == 90 - 7
    agent.kill()  # SIGKILL: nothing is flushed; the ring and the quota levels are already on disk
    assert ring_ids(state) == kept
    edge_agent_process(cfg)  # replays the recording again: the quota (persisted) takes no more
    wait_until(lambda: status(state).get("frames", 0) >= 90, 60, what="the replay served again")
    assert ring_ids(state) == kept
    server.start()  # the outage ends
    wait_until(lambda: not ring_ids(state), 60, what="the ring drained to the server")
    stored = server_samples(server, device)
    assert sorted(s["sample_id"] for s in stored) == kept  # nothing lost, nothing twice
    assert all(s["sample_id"].startswith("000001-") and s["reason"] == "random" for s in stored)
    assert len(list((server.data_dir / "samples").rglob("*.jpg"))) == len({s["image_sha256"] for s in stored})
    # The cap. Uploads are sequential, so the 2nd..last were sent after the 1st was stored; from
    # a bucket of at most one second's worth, B bytes need at least (B - rate) / rate seconds.
    by_arrival = sorted(stored, key=lambda s: datetime.fromisoformat(s["received_at"]))
    after_first = sum(s["image_bytes"] for s in by_arrival[1:])  # the bodies were larger still
    first, last = (datetime.fromisoformat(by_arrival[i]["received_at"]) for i in (0, -1))
    span = (last - first).total_seconds()
    assert after_first > 2 * rate, after_first  # so the bound below means something
    assert span >= (after_first - rate) / rate, (span, after_first)
    server.stop()


def test_capture_takes_the_next_frames_within_quotas_and_capture_false_sends_nothing(
    mosquitto: Mosquitto,
    edge_agent_process: Callable[..., AgentProcess],
    bundle: Path,
    recording: Path,
    tmp_path: Path,
) -> None:
    server = FleetServer(tmp_path, mosquitto.url, make_keys(tmp_path)).start()
    common = {"bundle": bundle, "source": recording, "broker": mosquitto.url, "server": server.url}
    on = agent_config(
        tmp_path / "on.toml", device="cap-on", token=issue_token(server, "cap-on", tmp_path / "on.token"),
        loop=True, low_confidence_max=0.0, per_minute=1000, per_hour=3, per_day=100_000, max_side_px=64, **common,
    )  # fmt: skip
    off = agent_config(
        tmp_path / "off.toml", device="cap-off", token=issue_token(server, "cap-off", tmp_path / "off.token"),
        loop=True, capture=False, random_share=1.0, per_minute=1000, per_hour=10_000, per_day=100_000, **common,
    )  # fmt: skip
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/+/events") as events:
        edge_agent_process(on)
        edge_agent_process(off)
        for device in ("cap-on", "cap-off"):
            state_dir = tmp_path / f"state-{device}"
            wait_until(lambda s=state_dir: status(s).get("frames", 0) > 0, 60, what=f"{device} serving")
        # As an operator would: `fleet samples capture` (the server sends the MQTT command).
        cmd_ids = {
            d: server.cli_json("samples", "capture", d, "--count", "5")["cmd_id"]
            for d in ("cap-on", "cap-off")
        }

        def answer(device: str) -> dict[str, Any] | None:
            for e in events.payloads(f"{device}/events"):
                if e.get("cmd_id") == cmd_ids[device]:
                    return dict(e)
            return None

        accepted = wait_until(lambda: answer("cap-on"), 30, what="cap-on answers the capture")
        refused = wait_until(lambda: answer("cap-off"), 30, what="cap-off answers the capture")
    assert accepted["kind"] == "capture" and accepted["data"]["count"] == 5
    assert refused["kind"] == "command.rejected" and refused["data"]["reason"] == "capture_disabled"
    # Five asked for, three allowed by the hourly quota: exactly three, each for the capture.
    state_on = tmp_path / "state-cap-on"
    wait_until(
        lambda: (status(state_on).get("samples") or {}).get("refused_by_quota", 0) >= 2,
        30,
        what="the quota binds",
    )
    wait_until(
        lambda: len(server_samples(server, "cap-on")) == 3 and not ring_ids(state_on), 30, what="3 stored"
    )
    assert [s["reason"] for s in server_samples(server, "cap-on")] == ["capture"] * 3
    # capture = false: a valid token, frames served, a random share of 1.0 — and nothing sampled or sent.
    state_off = tmp_path / "state-cap-off"
    wait_until(lambda: status(state_off).get("frames", 0) >= 90, 60, what="cap-off served a whole loop")
    assert server_samples(server, "cap-off") == []
    assert not (state_off / "samples").exists()
    assert status(state_off)["samples"] is None
    # The operator's CLI against the real server: list, show with the image, purge (rows and files).
    listed = server.cli_json("samples", "list", "--device", "cap-on")
    assert listed["total"] == 3
    first = listed["samples"][0]
    server.cli("samples", "show", str(first["id"]), "--image-out", str(tmp_path / "one.jpg"))
    assert (tmp_path / "one.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    refused = server.cli("samples", "purge", "--json", check=False)  # no filter: refused, clearly
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "error" in json.loads(refused.stdout)
    assert server.cli_json("samples", "purge", "--device", "cap-on")["samples"] == 3
    assert server.cli_json("samples", "list")["total"] == 0
    assert list((server.data_dir / "samples").rglob("*.jpg")) == []
    server.stop()
