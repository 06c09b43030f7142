"""The agent and the fleet server on the locked-down broker: TLS with verification, per-device
credentials, a forged deploy that installs nothing, and no secret in any log, message or file.

Real processes: Mosquitto with deploy/mosquitto/lineside.conf, `fleet serve --broker mqtts://...`,
`edge-agent run` replaying a simulator recording.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet_server import enroll as en
from sim.rig import write_agent_config
from tests.conftest import AgentProcess
from tests.fleet_support import FleetServer, make_bundle, make_keys
from tests.mqtt import find_mosquitto, wait_until
from tests.pg_support import require_program
from tests.tls_support import Client, Pki, SecureBroker, make_pki, topic
from tests.updates_support import World, tuf_http_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
# The tests' observer: a second fleet-server user (same ACL as `fleet serve`'s, its own session).
WATCH_USER = "lineside-watch"


@dataclass
class Plant:
    broker: SecureBroker
    pki: Pki
    creds_dir: Path
    passwords: dict[str, str]

    def fleet_client(self) -> Client:
        # Its own fleet-kind user: the shipped broker binds client ids to user names, so a watcher
        # logged in as lineside-fleet would take over the running `fleet serve`'s session.
        return Client(
            self.broker.port, self.pki.ca_file, username=WATCH_USER, password=self.passwords[WATCH_USER]
        ).connect()

    def fleet_env(self, ca_file: Path | None = None) -> dict[str, str]:
        return {
            "LINESIDE_FLEET_BROKER_USERNAME": en.FLEET_USER,
            # As `enroll --fleet-server`'s env file says: the password from its 0600 file.
            "LINESIDE_FLEET_BROKER_PASSWORD_FILE": str(self.creds_dir / f"{en.FLEET_USER}.password"),
            "LINESIDE_FLEET_BROKER_CA_FILE": str(ca_file or self.pki.ca_file),
        }


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    binary = find_mosquitto()
    if binary is None:
        require_program("the mosquitto binary", "apt-get install mosquitto")
    tmp = tmp_path_factory.mktemp("plant")
    pki = make_pki(tmp / "pki")
    broker = SecureBroker(binary, tmp / "broker", pki)
    passwords: dict[str, str] = {}
    for name in ("robot-s", "robot-f", "robot-x"):
        r = broker.enroll(name, tmp / "creds")
        assert r.password is not None
        passwords[name] = r.password
    broker.enroll("robot-c", tmp / "creds", ca=pki.ca)  # a client certificate, no password
    for fleet_user in (en.FLEET_USER, WATCH_USER):
        r = broker.enroll(fleet_user, tmp / "creds", kind="fleet")
        assert r.password is not None
        passwords[fleet_user] = r.password
    broker.start()
    try:
        yield Plant(broker, pki, tmp / "creds", passwords)
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "baseline"
    subprocess.run(
        [str(Path(sys.executable).parent / "edge-sim"), "record", "--out", str(out), "--frames", "60",
         "--seed", "5", "--fps", "20", "--force"],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    return out


def agent_toml(
    path: Path,
    plant: Plant,
    device: str,
    *,
    state: Path,
    bundle: Path,
    source: Path,
    ca_file: Path | None = None,
    updates: dict[str, str] | None = None,
    cert: bool = False,
) -> Path:
    """What an enrolled device's config looks like: mqtts, user + password_file, CA pinned."""
    creds = plant.creds_dir
    broker: dict[str, Any] = {
        "url": f"mqtts://127.0.0.1:{plant.broker.cert_port if cert else plant.broker.port}",
        "username": None if cert else device,
        "password_file": None if cert else creds / f"{device}.password",
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "tls": {
            "enabled": True,
            "ca_file": ca_file or plant.pki.ca_file,
            "cert_file": creds / f"{device}.crt" if cert else None,
            "key_file": creds / f"{device}.key" if cert else None,
        },
    }
    return write_agent_config(
        path,
        device_id=device,
        state_dir=state,
        bundle=bundle,
        source={"uri": source, "loop": True},
        broker=broker,
        telemetry={"window_s": 0.5},
        updates=updates or None,
    )


def _events(c: Client, device: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in c.messages(topic(device, "events"))]


def _telemetry(c: Client, device: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in c.messages(topic(device, "telemetry"))]


# -- TLS with verification: agent and server ------------------------------------------------------


def test_wrong_ca_is_a_clear_error_for_agent_and_server(
    plant: Plant,
    edge_agent_process: Callable[..., AgentProcess],
    recording: Path,
    tmp_path: Path,
) -> None:
    rogue = make_pki(tmp_path / "rogue", name="Not the plant CA")
    bundle = make_bundle(tmp_path, "1.0.0")
    cfg = agent_toml(
        tmp_path / "agent.toml", plant, "robot-x", state=tmp_path / "state", bundle=bundle, source=recording,
        ca_file=rogue.ca_file,
    )  # fmt: skip
    agent = edge_agent_process(cfg)
    (tmp_path / "srv").mkdir()
    server = FleetServer(
        tmp_path / "srv", plant.broker.url, make_keys(tmp_path), extra_env=plant.fleet_env(rogue.ca_file)
    )
    with plant.fleet_client() as watch:
        watch.subscribe(topic("robot-x", "state"))
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in agent.log(), 30, what="agent logs the TLS failure")
        log = server.log_path.open("ab")
        server.proc = subprocess.Popen(
            server.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=server.env,
        )
        log.close()
        try:
            wait_until(lambda: "failed certificate verification" in server.log(), 30, what="server TLS error")
            health = wait_until(lambda: _health(server), 30, what="server health")
        finally:
            server.stop()
        assert health["mqtt_connected"] is False
        assert agent.running, agent.log()[-2000:]
        # Neither ever reached the broker: no state from robot-x was published.
        assert watch.messages(topic("robot-x", "state")) == []
    assert "check broker_ca_file" in server.log()


def _health(server: FleetServer) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{server.url}/healthz", timeout=1.0)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


# -- a forged deploy installs nothing -------------------------------------------------------------


@pytest.fixture
def attacker_repo(tmp_path: Path) -> Iterator[tuple[World, str]]:
    """An attacker's TUF repository: a valid-looking release shapes@6.6.6, signed by the attacker's keys."""
    w = World(tmp_path / "attacker")
    w.release("6.6.6", name="shapes")
    with tuf_http_server(w.repo_dir) as (host, port):
        yield w, f"http://{host}:{port}"


def test_forged_deploy_from_the_fleet_user_installs_nothing(
    plant: Plant,
    edge_agent_process: Callable[..., AgentProcess],
    recording: Path,
    attacker_repo: tuple[World, str],
    tmp_path: Path,
) -> None:
    """A compromised fleet server (or broker) sends a deploy and serves the attacker's repository:
    the device verifies against its provisioned root.json and keeps serving its model."""
    attacker, attacker_url = attacker_repo
    keys = make_keys(tmp_path)  # the plant's real keys: the device trusts only these
    bundle = make_bundle(tmp_path, "1.0.0")
    state = tmp_path / "state"
    cfg = agent_toml(
        tmp_path / "agent.toml", plant, "robot-f", state=state, bundle=bundle, source=recording,
        updates={"root_json": str(keys / "root.json"), "repository_url": attacker_url},
    )  # fmt: skip
    with plant.fleet_client() as server:
        for ch in ("events", "telemetry", "state"):
            server.subscribe(topic("robot-f", ch))
        agent = edge_agent_process(cfg)
        server.wait_for_topic(topic("robot-f", "telemetry"), timeout=60)
        forged = {
            "type": "deploy",
            "cmd_id": "forged-1",
            "name": "shapes",
            "version": "6.6.6",
            "rollout_id": "evil",
        }
        ack = server.publish(topic("robot-f", "cmd"), json.dumps(forged).encode())
        assert not getattr(ack, "is_failure", False), (
            ack
        )  # the fleet user may command: the broker lets it through
        answer = wait_until(
            lambda: [e for e in _events(server, "robot-f") if e.get("cmd_id") == "forged-1"
                     and e["kind"] in ("update.rejected", "update.failed")],
            60, what="the agent's rejection event",
        )[0]  # fmt: skip
        seen = max(t["seq"] for t in _telemetry(server, "robot-f"))
        # Still serving 1.0.0 afterwards: later telemetry windows, with frames, on the old model.
        wait_until(
            lambda: [t for t in _telemetry(server, "robot-f") if t["seq"] > seen and t["frames"] > 0
                     and (t.get("model") or {}).get("version") == "1.0.0"],
            30, what="telemetry on 1.0.0 after the rejection",
        )  # fmt: skip
        assert agent.running
    print(f"forged deploy answered: {answer}")
    assert answer["level"] in ("warning", "error")
    # The attacker's metadata is not signed by the keys the provisioned root.json names.
    assert (answer.get("data") or {}).get("reason") == "signature", answer
    assert not any(e["kind"] == "update.installed" for e in _events(server, "robot-f"))
    manifests = [json.loads(p.read_text()) for p in state.rglob("manifest.json")]
    assert all(m["version"] != "6.6.6" for m in manifests), manifests
    assert not list(state.rglob("*6.6.6*"))  # nothing of the attacker's release was kept either
    assert attacker.keys != keys


# -- secrets never leak; private files stay private -----------------------------------------------


def _pem_secrets(path: Path) -> list[str]:
    """A private key file's secret material as it could leak: its PEM body and each body line."""
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("-----")]
    return ["".join(lines), *[ln for ln in lines if len(ln) >= 24]]


def find_leaks(haystacks: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """``where: which`` for every secret found in any haystack."""
    return [
        f"{where}: {name}" for where, text in haystacks.items() for name, s in secrets.items() if s in text
    ]


def test_release_over_tls_leaks_no_secret_and_keeps_files_private(
    plant: Plant,
    edge_agent_process: Callable[..., AgentProcess],
    recording: Path,
    tmp_path: Path,
) -> None:
    """Agent + `fleet serve` over TLS with per-user passwords, a signed release, a rollout and an
    install; then every log, MQTT payload, status/spool file and the server's database is scanned
    for private keys, API tokens and MQTT passwords."""
    keys = make_keys(tmp_path)
    (tmp_path / "srv").mkdir()
    server = FleetServer(tmp_path / "srv", plant.broker.url, keys, extra_env=plant.fleet_env())
    server.start()  # healthy only once connected to the broker over TLS as the fleet user
    state = tmp_path / "state"
    try:
        token = server.token
        viewer = server.cli_json("tokens", "create", "--role", "viewer")["token"]
        bundles = {v: make_bundle(tmp_path, v) for v in ("1.0.0", "1.1.0")}
        for b in bundles.values():
            server.cli("release", str(b), "--keys", str(keys), "--server", server.url, "--token", token)
        token_file = tmp_path / "robot-s.http-token"
        server.cli("devices", "token", "robot-s", "--out", str(token_file))
        device_token = token_file.read_text().strip()
        cfg = agent_toml(
            tmp_path / "agent.toml", plant, "robot-s", state=state, bundle=bundles["1.0.0"], source=recording,
            updates={"root_json": str(keys / "root.json"), "repository_url": server.url,
                     "token_file": str(token_file)},
        )  # fmt: skip
        with plant.fleet_client() as watch:
            for ch in ("state", "telemetry", "events", "decisions"):
                watch.subscribe(topic("robot-s", ch))
            agent = edge_agent_process(cfg)
            wait_until(
                lambda: any(d["device_id"] == "robot-s" and d["online"] for d in server.cli_json("devices", "list")),
                60, what="robot-s online at the server",
            )  # fmt: skip
            server.cli_json(
                "rollout", "start", "shapes@1.1.0", "--devices", "robot-s", "--stages", "100%", "--soak", "0s",
                "--min-gate-frames", "0",
            )  # fmt: skip
            wait_until(
                lambda: [e for e in _events(watch, "robot-s") if e["kind"] == "update.installed"], 90,
                what="1.1.0 installed over the TLS link",
            )  # fmt: skip
            wait_until(
                lambda: "1.1.0" in str(server.cli_json("devices", "show", "robot-s").get("active_model")),
                30, what="the server sees 1.1.0 active",
            )  # fmt: skip
            assert agent.stop() == 0
            shown = server.cli("devices", "show", "robot-s", "--json").stdout
            payloads = {
                f"mqtt {m.topic} #{i}": m.payload.decode(errors="replace")
                for i, m in enumerate(watch.messages())
            }
    finally:
        server.stop()
    assert payloads and any("decisions" in k for k in payloads)
    # The TLS link held: no reconnects (paho writes racing reads would corrupt the stream).
    assert "MQTT connection lost" not in agent.log(), agent.log()[-3000:]
    assert "bad record mac" not in plant.broker.log_tail(10**7)

    secrets: dict[str, str] = {
        "admin token": token,
        "viewer token": viewer,
        "device token": device_token,
        **{f"mqtt password {u}": p for u, p in plant.passwords.items()},
    }
    key_files = [
        *sorted((keys / "private").glob("*.pem")),
        plant.pki.server_key,
        plant.pki.ca.directory / "ca.key",
    ]
    for kf in key_files:
        for i, s in enumerate(_pem_secrets(kf)):
            secrets[f"{kf.name} [{i}]"] = s
    haystacks: dict[str, str] = {
        "agent log": agent.log(),
        "fleet serve log": server.log(),
        "broker log": plant.broker.log_tail(10**7),
        "devices show": shown,
        "status.json": (state / "status.json").read_text(),
        **payloads,
    }
    for p in state.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".log", ".txt"):
            haystacks[str(p.relative_to(tmp_path))] = p.read_text(errors="replace")
    for p in (tmp_path / "srv" / "fleet-data").rglob("*.db"):
        haystacks[str(p.relative_to(tmp_path))] = p.read_bytes().decode("latin-1")
    # The scanner works: a planted secret is found.
    assert find_leaks({"planted": f"x{plant.passwords['robot-s']}y"}, secrets) == [
        "planted: mqtt password robot-s"
    ]
    assert find_leaks(haystacks, secrets) == []
    print(f"scanned {len(haystacks)} logs/payloads/files for {len(secrets)} secrets: none found")

    # Permissions: the agent's state directory is its own; every private key and password is 0600.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    private = [*key_files, server.data_dir / "admin.token",
               *(plant.creds_dir / f"{u}.password" for u in plant.passwords), plant.broker.password_file]  # fmt: skip
    modes = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in private}
    assert set(modes.values()) == {"0o600"}, modes
    assert stat.S_IMODE((plant.pki.ca.directory).stat().st_mode) == 0o700


def test_agent_with_a_client_certificate_reports_on_the_mutual_tls_listener(
    plant: Plant,
    edge_agent_process: Callable[..., AgentProcess],
    recording: Path,
    tmp_path: Path,
) -> None:
    """`fleet devices enroll robot-c --cert`: the agent logs in with its certificate (CN = user)."""
    cfg = agent_toml(
        tmp_path / "agent.toml", plant, "robot-c", state=tmp_path / "state", bundle=make_bundle(tmp_path, "1.0.0"),
        source=recording, cert=True,
    )  # fmt: skip
    with plant.fleet_client() as server:
        server.subscribe(topic("robot-c", "telemetry"))
        server.subscribe(topic("robot-c", "state"))
        agent = edge_agent_process(cfg)
        wait_until(
            lambda: [t for t in _telemetry(server, "robot-c") if t["frames"] > 0], 60, what="telemetry"
        )
        state = json.loads(server.wait_for_topic(topic("robot-c", "state")).payload)
        assert state["online"] is True and state["device_id"] == "robot-c"
        assert agent.stop() == 0
    assert "MQTT connection lost" not in agent.log()
