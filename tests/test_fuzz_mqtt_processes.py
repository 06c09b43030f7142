"""Garbage over a real Mosquitto into real processes.

- A running ``edge-agent run``: a burst of hostile payloads on its ``cmd`` topic → one
  ``message.rejected`` per payload (or ``command.rejected``), the agent keeps running and keeps
  classifying, a ping after the burst is still answered, event seqs stay gap-free.
- A running ``fleet serve``: garbage on ``state``/``telemetry``/``events`` (and topics that are
  not ours) → no crash, each counted as rejected in ``/metrics``, and the valid messages sent
  between them are all ingested (a poison message must not block the batch it arrives in).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.messages import DeployCommand, PingCommand, Telemetry, dump
from tests.conftest import AgentProcess
from tests.fault_support import agent_toml, record, seq_gaps
from tests.fleet_support import FleetServer, make_keys
from tests.fuzz_inputs import RAW_NASTIES
from tests.mqtt import Collector, Mosquitto, wait_until

pytestmark = pytest.mark.integration
ROOT = "lineside/v1"


def _publisher(broker: Mosquitto) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{random.randrange(1 << 30)}")
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _garbage(n: int, seed: int) -> list[bytes]:
    """Hostile payloads: known nasties, byte-mutated valid commands, an oversized one."""
    rng = random.Random(seed)
    valid = [
        dump(PingCommand(cmd_id="p")),
        dump(DeployCommand(cmd_id="d", name="x", version="1.0.0")),
    ]
    out = [*RAW_NASTIES, b"x" * 300_000]
    while len(out) < n:
        b = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                del b[i:]
                if not b:
                    b += b"{"
            else:
                b[i:i] = rng.randbytes(rng.randint(1, 8))
        out.append(bytes(b))
    return out[:n]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", behaviour="confident")


def test_garbage_burst_on_the_agents_cmd_topic(
    tmp_path: Path, mosquitto: Mosquitto, edge_agent_process: Callable[..., AgentProcess], bundle: Path
) -> None:
    cam = record(tmp_path / "camera", frames=30, fps=30)
    config = agent_toml(
        tmp_path / "agent.toml",
        device="fz-1",
        state=tmp_path / "state",
        source=cam,
        broker=mosquitto.url,
        bundle=bundle,
    )
    garbage = _garbage(300, seed=8)
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/fz-1/#") as col:
        agent = edge_agent_process(config)
        wait_until(lambda: col.payloads("/state"), 30, what="agent online")
        wait_until(lambda: sum(p["frames"] for p in col.payloads("/telemetry")) >= 30, 60, what="classifying")
        frames_before = sum(p["frames"] for p in col.payloads("/telemetry"))
        pub = _publisher(mosquitto)
        try:
            for p in garbage:
                pub.publish(f"{ROOT}/devices/fz-1/cmd", p, qos=1).wait_for_publish(10)

            def rejections() -> list[dict[str, object]]:
                return [
                    e
                    for e in col.payloads("/events")
                    if e["kind"] in ("message.rejected", "command.rejected")
                ]

            # Every hostile payload gets exactly one answer (some queue-full rejections allowed).
            wait_until(lambda: len(rejections()) >= len(garbage) - 2, 60, what="a rejection per payload")
            pub.publish(f"{ROOT}/devices/fz-1/cmd", dump(PingCommand(cmd_id="after-burst")), qos=1)
            wait_until(
                lambda: [e for e in col.payloads("/events") if e.get("cmd_id") == "after-burst"],
                30,
                what="pong after the burst",
            )
        finally:
            pub.loop_stop()
            pub.disconnect()
        wait_until(
            lambda: sum(p["frames"] for p in col.payloads("/telemetry")) >= frames_before + 30,
            30,
            what="frames keep increasing after the burst",
        )
        assert agent.running, agent.log()[-3000:]
        rej = rejections()
        assert any("over the" in str(e["message"]) for e in rej), (
            "the oversized payload is refused by its bound"
        )
        # The deploys that happened to parse were refused as commands, not crashes: nothing installed.
        assert not [e for e in col.payloads("/events") if e["kind"] == "update.installed"]
        assert agent.stop() == 0, agent.log()[-3000:]
    assert seq_gaps([p["seq"] for p in col.payloads("/events")]) == []
    assert "Traceback" not in agent.log()


def _metric(text: str, kind: str) -> int:
    m = re.search(rf'lineside_ingest_messages_total{{kind="{kind}"}} (\d+)', text)
    return int(m.group(1)) if m else 0


def test_garbage_into_the_servers_ingest(tmp_path: Path, mosquitto: Mosquitto) -> None:
    server = FleetServer(tmp_path, mosquitto.url, make_keys(tmp_path)).start()
    try:
        pub = _publisher(mosquitto)
        rng = random.Random(3)
        garbage = _garbage(120, seed=5)
        # Valid for the schema, hostile for the database: caught at parse now (it blocked ingest).
        poison = json.dumps(
            {
                "device_id": "fz-2",
                "seq": 0,
                "window_start": "2026-01-01T00:00:00Z",
                "window_s": 1,
                "frames": 0,
            }
        ).replace('"frames": 0', f'"frames": {2**64}')
        valid = [
            dump(Telemetry(device_id="fz-2", seq=i, window_start=datetime.now(UTC), window_s=1.0, frames=10))
            for i in range(20)
        ]
        sent_rejectable = 0
        try:
            for i, g in enumerate(garbage):
                channel = ("state", "telemetry", "events")[i % 3]
                pub.publish(f"{ROOT}/devices/fz-2/{channel}", g, qos=1).wait_for_publish(10)
                sent_rejectable += 1
                if i % 6 == 0 and valid:
                    pub.publish(f"{ROOT}/devices/fz-2/telemetry", valid.pop(0), qos=1).wait_for_publish(10)
            pub.publish(f"{ROOT}/devices/fz-2/telemetry", poison.encode(), qos=1).wait_for_publish(10)
            sent_rejectable += 1
            for v in valid:
                pub.publish(f"{ROOT}/devices/fz-2/telemetry", v, qos=1).wait_for_publish(10)
            # A device id in the payload that is not the topic's: refused (no spoofing through ingest).
            spoof = dump(Telemetry(device_id="other", seq=99, window_start=datetime.now(UTC), window_s=1.0))
            pub.publish(f"{ROOT}/devices/fz-2/telemetry", spoof, qos=1).wait_for_publish(10)
            sent_rejectable += 1
            for bad_topic in (f"{ROOT}/devices/bad id/telemetry", f"{ROOT}/devices/x/y/telemetry"):
                pub.publish(bad_topic, rng.randbytes(20), qos=1).wait_for_publish(10)
        finally:
            pub.loop_stop()
            pub.disconnect()

        def metrics() -> str:
            return httpx.get(f"{server.url}/metrics", timeout=5).text

        wait_until(lambda: _metric(metrics(), "telemetry_new") >= 20, 30, what="valid telemetry ingested")
        wait_until(lambda: _metric(metrics(), "rejected") >= sent_rejectable, 30, what="garbage counted")
        assert server.proc is not None and server.proc.poll() is None
        assert httpx.get(f"{server.url}/healthz", timeout=5).json()["status"] == "ok"
        dev = httpx.get(
            f"{server.url}/api/v1/devices/fz-2",
            params={"recent": 50},
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=5,
        )
        assert dev.status_code == 200, dev.text  # no poisoned value breaks the API read
        seqs = sorted(t["seq"] for t in dev.json()["recent_telemetry"])
        assert seqs == list(range(20)), seqs
    finally:
        server.stop()
        print(server.log()[-3000:])
