"""The robot's side with real processes: decisions on the local socket and over OPC UA, with the
plant broker running and stopped; bad line-state input and an uncreatable socket path.

Integration tests: a real Mosquitto, a real ``edge-agent run`` replaying a recording at 30 fps,
asyncua's own client, a plain Unix-socket client.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sim.rig import write_agent_config
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


def need_asyncua() -> None:
    """asyncua is in the dev extra: under CI=true its absence fails, elsewhere it skips."""
    if os.environ.get("CI") == "true":
        import asyncua  # noqa: F401
    else:
        pytest.importorskip("asyncua")


def write_config(path: Path, *, bundle: Path, source: Path, broker: str, extra: str) -> Path:
    return write_agent_config(
        path,
        device_id="robot-1",
        state_dir=path.parent / "state",
        bundle=bundle,
        source={"uri": source, "loop": True},
        broker={"url": broker, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        telemetry={"window_s": 1.0, "flush_timeout_s": 2.0},
        **tomllib.loads(extra),  # the tables under test ([local_output], [opcua]...)
    )


class SocketReader:
    """A local client: connects, reads newline-delimited JSON, can write a line."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(30.0)  # a deadline: the agent may still be starting on a loaded machine
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
    need_asyncua()
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
        status = tmp_path / "state" / "status.json"
        wait_until(lambda: status.exists() and json.loads(status.read_text()).get("line_state") == "idle", 10)

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


class PlcServer:
    """A stand-in PLC: an asyncua server on its own thread with one String node, ns=2;s=Line.State."""

    def __init__(self, port: int) -> None:
        import threading

        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._node: Any = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/plc/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace("urn:test:plc")
        assert idx == 2
        line = await server.nodes.objects.add_object(idx, "Line")
        self._node = await line.add_variable(ua.NodeId("Line.State", idx), "State", "Execute")
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with server:
            self._ready.set()
            await self._stop.wait()

    def start(self) -> PlcServer:
        self._thread.start()
        assert self._ready.wait(30), "the stand-in PLC did not start"
        return self

    def set(self, value: str) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._node.write_value(value), self._loop).result(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_line_state_from_an_opcua_node_unreachable_then_read(
    tmp_path: Path,
    bundle: Path,
    recording: Path,
    mosquitto: Mosquitto,
    edge_agent_process: Callable[..., AgentProcess],
) -> None:
    need_asyncua()
    port = free_port()
    cfg = write_config(
        tmp_path / "agent.toml",
        bundle=bundle,
        source=recording,
        broker=mosquitto.url,
        extra=(
            f'[line]\nsource = "opcua"\nopcua_url = "opc.tcp://127.0.0.1:{port}/plc/"\n'
            'opcua_node = "ns=2;s=Line.State"\nopcua_poll_s = 0.2\n'
        ),
    )
    with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/devices/robot-1/#").start() as col:
        edge_agent_process(cfg)
        # Nothing listens yet: one clear event, the state is unknown, decisions keep coming.
        down = col.wait_for(lambda c: events(c, "line.state"), 30)[0]
        assert down["data"]["reason"] == "source_unreachable" and down["data"]["state"] == "unknown"
        n = len(col.messages("/decisions"))
        col.wait_for(lambda c: len(c.messages("/decisions")) >= n + 30, 10)
        assert len(events(col, "line.state")) == 1, "one event per outage, not one per retry"

        plc = PlcServer(port).start()
        try:
            col.wait_for(
                lambda c: [e for e in events(c, "line.state") if e["data"].get("state") == "execute"], 30
            )
            plc.set("Idle")
            col.wait_for(
                lambda c: [e for e in events(c, "line.state") if e["data"].get("state") == "idle"], 10
            )
            plc.set("Warp speed")
            bad = col.wait_for(
                lambda c: [e for e in events(c, "line.state") if e["data"].get("reason") == "bad_value"], 10
            )[0]
            assert bad["data"]["state"] == "unknown"
        finally:
            plc.stop()


def test_opcua_anonymous_is_refused_unless_configured(
    tmp_path: Path,
    bundle: Path,
    recording: Path,
    mosquitto: Mosquitto,
    edge_agent_process: Callable[..., AgentProcess],
) -> None:
    need_asyncua()
    from asyncua import Client

    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/lineside/"
    (tmp_path / "opcua-password").write_text("s3cret-line\n")
    cfg = write_config(
        tmp_path / "agent.toml",
        bundle=bundle,
        source=recording,
        broker=mosquitto.url,
        extra=(
            f'[opcua]\nenabled = true\nendpoint = "{url}"\nusername = "plc"\n'
            f'password_file = "{tmp_path / "opcua-password"}"\nsecurity_policies = ["None"]\n'
        ),
    )
    edge_agent_process(cfg)
    wait_until(lambda: _listening(port), 30, what="the OPC UA server")

    async def connect(user: str | None, password: str | None) -> str:
        client = Client(url, timeout=5)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        try:
            async with client:
                idx = await client.get_namespace_index("urn:lineside:vision")
                node = await client.nodes.objects.get_child([f"{idx}:Lineside", f"{idx}:Model"])
                return str(await node.read_value())
        except Exception as exc:
            return f"refused: {type(exc).__name__}"

    assert asyncio.run(connect(None, None)).startswith("refused")
    assert asyncio.run(connect("plc", "wrong")).startswith("refused")
    assert asyncio.run(connect("plc", "s3cret-line")) == "tiny@1.0.0"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_opcua_enabled_without_the_extra_is_one_clear_config_error(
    tmp_path: Path, bundle: Path, recording: Path
) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO, edge_agent_command

    shim = tmp_path / "shim"
    (shim / "asyncua").mkdir(parents=True)
    (shim / "asyncua" / "__init__.py").write_text("raise ImportError('asyncua is not installed')\n")
    cfg = write_config(
        tmp_path / "agent.toml",
        bundle=bundle,
        source=recording,
        broker="mqtt://127.0.0.1:1",
        extra="[opcua]\nenabled = true\nallow_anonymous = true\n",
    )
    env = {"PYTHONPATH": f"{shim}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [*edge_agent_command(), "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode != 0 and sys.executable
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "opcua" in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_opcua_port_in_use_is_a_typed_error_not_a_hang() -> None:
    need_asyncua()
    from edge_agent.config import OpcUaConfig
    from edge_agent.opcua_server import OpcUaOutput
    from lineside_common.errors import LocalOutputError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = OpcUaConfig(
            enabled=True,
            endpoint=f"opc.tcp://127.0.0.1:{port}/x/",
            allow_anonymous=True,
            security_policies=["None"],
        )
        out = OpcUaOutput(cfg, lambda: {})
        with pytest.raises(LocalOutputError) as exc:
            out.start()
        assert exc.value.reason == "bind"
