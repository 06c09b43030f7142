"""The robot's side with real processes: decisions on the local socket and over OPC UA, with the
plant broker running and stopped; bad line-state input and an uncreatable socket path.

Integration tests: a real Mosquitto, a real ``edge-agent run`` replaying a recording at 30 fps,
asyncua's own client, a plain Unix-socket client.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentProcess
from tests.fault_support import record
from tests.mqtt import Collector, Mosquitto, free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = "lineside/v1"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", behaviour="confident")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("rec") / "line", frames=60, seed=5, fps=30)


def write_config(path: Path, *, bundle: Path, source: Path, broker: str, extra: str) -> Path:
    path.write_text(
        f'device_id = "robot-1"\nstate_dir = "{path.parent / "state"}"\nbundle = "{bundle}"\n'
        f'[source]\nuri = "{source}"\nloop = true\n'
        f'[broker]\nurl = "{broker}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        f"[telemetry]\nwindow_s = 1.0\nflush_timeout_s = 2.0\n{extra}\n"
    )
    return path


class SocketReader:
    """A local client: connects, reads newline-delimited JSON, can write a line."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(5.0)
        self.buf = b""

    def read(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < n:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                assert chunk, "the agent closed the local socket"
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\n")
            out.append(json.loads(line))
        return out

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")


def events(col: Collector, kind: str) -> list[dict[str, Any]]:
    return [e for e in col.payloads("/events") if e["kind"] == kind]


async def opcua_session(
    url: str, seconds_after_stop: float, stop_broker: Callable[[], None]
) -> dict[str, Any]:
    """Subscribe to result events, read the Result struct, stop the broker meanwhile; what was seen."""
    from asyncua import Client, ua

    seen: list[str] = []

    class Handler:
        def event_notification(self, event: Any) -> None:
            seen.append(event.DecisionId)

    async with Client(url) as client:
        await client.load_data_type_definitions()
        idx = await client.get_namespace_index("urn:lineside:vision")
        obj = await client.nodes.objects.get_child([f"{idx}:Lineside"])
        etype = await client.nodes.base_event_type.get_child([f"{idx}:LinesideResultEventType"])
        sub = await client.create_subscription(20, Handler())
        await sub.subscribe_events(obj, etype, queuesize=1000)
        result = await obj.get_child([f"{idx}:Result"])
        first = await result.read_value()
        await asyncio.sleep(0.5)  # let a few events arrive before the broker goes
        stop_broker()
        before = len(seen)
        deadline = asyncio.get_running_loop().time() + 10
        while len(seen) < before + 30 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        last = await result.read_value()
        model = await (await obj.get_child([f"{idx}:Model"])).read_value()
        await sub.delete()
        assert isinstance(first, object) and ua is not None
        return {"seen": seen, "before_stop": before, "first": first, "last": last, "model": model}


def test_decisions_flow_locally_with_the_plant_broker_stopped(
    tmp_path: Path,
    bundle: Path,
    recording: Path,
    mosquitto: Mosquitto,
    edge_agent_process: Callable[..., AgentProcess],
) -> None:
    pytest.importorskip("asyncua")  # in the dev extra; a plain install stays lean
    sock_path = tmp_path / "run" / "decisions.sock"
    port = free_port()
    cfg = write_config(
        tmp_path / "agent.toml",
        bundle=bundle,
        source=recording,
        broker=mosquitto.url,
        extra=(
            f'[local_output]\nsocket_path = "{sock_path}"\n[line]\nsource = "local"\n'
            f'[opcua]\nenabled = true\nendpoint = "opc.tcp://127.0.0.1:{port}/lineside/"\n'
            'allow_anonymous = true\nsecurity_policies = ["None"]\n'
        ),
    )
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/robot-1/#").start() as col:
        agent = edge_agent_process(cfg)
        wait_until(lambda: sock_path.exists(), 30, what="the local socket")
        reader = SocketReader(sock_path)
        first = reader.read(5)
        assert all(d["model"] == "tiny@1.0.0" and d["id"] for d in first), first

        # Bad input on the local line-state API: a clear event, the state is unknown, serving goes on.
        reader.send('{"state": "Dancing"}')
        bad = col.wait_for(lambda c: events(c, "line.state"), 10)[0]
        assert bad["data"]["reason"] == "bad_value" and bad["data"]["state"] == "unknown"
        reader.send("Idle")
        col.wait_for(lambda c: [e for e in events(c, "line.state") if e["data"].get("state") == "idle"], 10)

        seen = asyncio.run(opcua_session(f"opc.tcp://127.0.0.1:{port}/lineside/", 2.0, mosquitto.stop))
        after = reader.read(60)  # two seconds of decisions at 30 fps, broker down
        assert agent.running

    # Every decision reached the subscribed OPC UA client: ids are <boot>-<n>, consecutive.
    numbers = [int(i.rsplit("-", 1)[1]) for i in seen["seen"]]
    assert len(numbers) >= seen["before_stop"] + 30, "no events with the broker stopped"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a decision was skipped"
    assert seen["last"].DecisionId != seen["first"].DecisionId
    assert seen["last"].ModelName == "tiny" and seen["last"].ModelVersion == "1.0.0"
    assert seen["model"] == "tiny@1.0.0"
    socket_numbers = [int(d["id"].rsplit("-", 1)[1]) for d in after]
    assert socket_numbers == list(range(socket_numbers[0], socket_numbers[0] + len(socket_numbers)))


def test_a_socket_path_that_cannot_be_created_is_an_event_and_serving_continues(
    tmp_path: Path,
    bundle: Path,
    recording: Path,
    mosquitto: Mosquitto,
    edge_agent_process: Callable[..., AgentProcess],
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the socket's directory should be")
    cfg = write_config(
        tmp_path / "agent.toml",
        bundle=bundle,
        source=recording,
        broker=mosquitto.url,
        extra=f'[local_output]\nsocket_path = "{blocker / "decisions.sock"}"\n',
    )
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/robot-1/#").start() as col:
        edge_agent_process(cfg)
        err = col.wait_for(lambda c: events(c, "error"), 30)[0]
        assert err["data"]["reason"] == "local_output.socket_path"
        col.wait_for(lambda c: len(c.messages("/decisions")) >= 30, 10)
