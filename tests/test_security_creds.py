"""Model files need credentials, and are streamed (issue 13, hole 5).

- ``/tuf/targets/`` (the bundles, the plant's models) answers 401 without a token, 200 to admin,
  viewer and device tokens, 206 with the right bytes to a Range; ``/tuf/metadata/`` stays open.
- A device token (one per robot, issued at enrollment or by ``fleet devices token``) is refused
  with 403 by every other route; issuing again rotates it.
- A Range request on a large file does not read it into the server's memory (the server
  process's peak RSS, real ``fleet serve``).
- A real ``edge-agent`` installs a release over HTTP with its device token; ``fleet export
  --server --token`` and ``fleet devices enroll --server`` work against a real server.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fleet_server.app import Services, create_app
from fleet_server.settings import load_settings
from tests.conftest import AgentProcess
from tests.fleet_support import FleetServer, make_bundle, make_keys, signed_release
from tests.mqtt import Mosquitto, wait_until

ADMIN = "admin-secret"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundles"), "1.0.0")


@pytest.fixture
def client(tmp_path: Path, keys: Path) -> Iterator[TestClient]:
    settings = load_settings(
        overrides={"data_dir": tmp_path / "data", "admin_token": ADMIN, "online_keys_dir": keys}
    )
    svc = Services.build(settings)
    with TestClient(create_app(settings, services=svc, background=False)) as c:
        yield c
    svc.db.dispose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _release(client: TestClient, keys: Path, bundle: Path) -> dict[str, Any]:
    import base64
    import json

    signed, files = signed_release(keys, bundle, None)
    body = {
        "targets": json.loads(signed),
        "files": {p: base64.b64encode(b).decode() for p, b in files.items()},
    }
    r = client.post("/api/v1/models", json=body, headers=_bearer(ADMIN))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def _device_token(client: TestClient, device: str) -> str:
    r = client.post(f"/api/v1/devices/{device}/token", headers=_bearer(ADMIN))
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "device"
    token: str = r.json()["token"]
    return token


def test_targets_need_a_token_and_every_role_reads_them(client: TestClient, keys: Path, bundle: Path) -> None:
    info = _release(client, keys, bundle)
    meta = info["files"]["model.onnx"]
    url = f"/tuf/targets/shapes/1.0.0/{meta['sha256']}.model.onnx"
    # The signed metadata stays open: a device needs it before anything else.
    assert client.get("/tuf/metadata/timestamp.json").status_code == 200
    # No token, a wrong token, a malformed header: 401, and not a byte of the model.
    for headers in ({}, _bearer("lsf_nope"), {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        r = client.get(url, headers=headers)
        assert r.status_code == 401, (headers, r.status_code)
        assert r.headers.get("www-authenticate") == "Bearer"
    r = client.get(url, headers={"Range": "bytes=0-", **_bearer("lsf_nope")})
    assert r.status_code == 401
    viewer = client.post("/api/v1/tokens", json={"role": "viewer"}, headers=_bearer(ADMIN)).json()["token"]
    device = _device_token(client, "robot-1")
    whole = None
    for token in (ADMIN, viewer, device):
        r = client.get(url, headers=_bearer(token))
        assert r.status_code == 200
        assert len(r.content) == meta["length"]
        whole = r.content
    assert whole is not None
    r = client.get(url, headers={"Range": "bytes=100-199", **_bearer(device)})
    assert r.status_code == 206 and r.content == whole[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    r = client.get(url, headers={"Range": "bytes=-7", **_bearer(device)})
    assert r.status_code == 206 and r.content == whole[-7:]
    r = client.get(url, headers={"Range": f"bytes={len(whole)}-", **_bearer(device)})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(whole)}"


def _fill(path: str) -> str:
    values = {"sha256": "0" * 64, "alert_id": "1", "rollout_id": "r-1", "device_id": "robot-1"}
    out = path
    for name, value in values.items():
        out = out.replace("{" + name + "}", value)
    import re

    return re.sub(r"\{[^}]+\}", "x", out)


def test_a_device_token_reads_targets_and_nothing_else(client: TestClient) -> None:
    device = _device_token(client, "robot-1")
    # Every route the server documents (its OpenAPI schema), so a route added later is covered too.
    paths = client.get("/openapi.json").json()["paths"]
    checked = []
    # The one exception: its own samples upload (issue 16), where the token is checked against
    # the device in the URL — for another device's URL it is refused like everywhere else.
    own_upload = ("PUT", "/api/v1/devices/{device_id}/samples/{sample_id}")
    for route, ops in paths.items():
        if not route.startswith("/api/"):
            continue
        for method in sorted(m.upper() for m in ops):
            kw: dict[str, Any] = {} if method in ("GET", "DELETE") else {"json": {}}
            if (method, route) == own_upload:
                r = client.request(
                    method, _fill(route).replace("robot-1", "robot-2"), headers=_bearer(device), **kw
                )
                assert r.status_code == 403 and r.json()["reason"] == "wrong_device", r.text
                r = client.request(method, _fill(route), headers=_bearer(device), **kw)
                assert r.status_code == 422 and r.json()["reason"] == "malformed", r.text  # allowed, bad body
            else:
                r = client.request(method, _fill(route), headers=_bearer(device), **kw)
                assert r.status_code == 403, (method, route, r.status_code, r.text)
            checked.append((method, route))
    # The routes that matter most are among those checked (the list is not accidentally empty).
    for must in (
        ("GET", "/api/v1/devices"),
        ("GET", "/api/v1/artifacts/{sha256}"),
        ("POST", "/api/v1/devices/{device_id}/token"),
        ("POST", "/api/v1/tokens"),
        ("POST", "/api/v1/rollouts"),
        ("GET", "/api/v1/samples"),
        ("POST", "/api/v1/samples/purge"),
        own_upload,
    ):
        assert must in checked, must


def test_device_tokens_are_bound_rotated_and_revoked(client: TestClient, keys: Path, bundle: Path) -> None:
    info = _release(client, keys, bundle)
    meta = info["files"]["manifest.json"]
    url = f"/tuf/targets/shapes/1.0.0/{meta['sha256']}.manifest.json"
    first = _device_token(client, "robot-1")
    other = _device_token(client, "robot-2")
    assert client.get(url, headers=_bearer(first)).status_code == 200
    second = _device_token(client, "robot-1")
    assert client.get(url, headers=_bearer(first)).status_code == 401  # rotated: the old one is dead
    assert client.get(url, headers=_bearer(second)).status_code == 200
    assert client.get(url, headers=_bearer(other)).status_code == 200  # another robot's is untouched
    r = client.delete("/api/v1/devices/robot-1/token", headers=_bearer(ADMIN))
    assert r.status_code == 200 and r.json()["revoked"] == 1
    assert client.get(url, headers=_bearer(second)).status_code == 401
    # Only an admin issues them, only bound to a valid device id; /tokens cannot mint unbound ones.
    viewer = client.post("/api/v1/tokens", json={"role": "viewer"}, headers=_bearer(ADMIN)).json()["token"]
    assert client.post("/api/v1/devices/robot-3/token", headers=_bearer(viewer)).status_code == 403
    assert client.post("/api/v1/devices/bad id!/token", headers=_bearer(ADMIN)).status_code == 422
    assert client.post("/api/v1/tokens", json={"role": "device"}, headers=_bearer(ADMIN)).status_code == 422
    # Stored hashed like every token.
    app: Any = client.app  # the TestClient types its app as a bare ASGI callable
    svc: Services = app.state.services
    with svc.db.engine.connect() as c:
        dumped = " ".join(str(row) for row in c.exec_driver_sql("SELECT * FROM tokens").fetchall())
    assert other not in dumped and "robot-2" in dumped


# -- real processes ---------------------------------------------------------------------------------


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.integration
def test_a_range_request_streams_the_file(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """``Range: bytes=0-`` on a 256 MiB target: the server's peak RSS grows by far less than the
    file (it read the whole range into memory before: +256 MiB)."""
    size = 256 * 1024 * 1024
    server = FleetServer(tmp_path, mosquitto.url, make_keys(tmp_path)).start()
    try:
        assert server.proc is not None
        big = server.data_dir / "repo" / "targets" / "big" / "1.0.0" / "huge.bin"
        big.parent.mkdir(parents=True)
        with big.open("wb") as f:  # sparse: no disk used, zeros read back
            f.truncate(size)
        token = server.token
        url = f"{server.url}/tuf/targets/big/1.0.0/huge.bin"
        # Warm the route up (imports, first-request allocations) before taking the baseline.
        r = httpx.get(url, headers={"Range": "bytes=0-1023", **_bearer(token)}, timeout=30)
        assert r.status_code == 206 and len(r.content) == 1024
        before = _peak_rss_kib(server.proc.pid)
        received = 0
        with httpx.stream("GET", url, headers={"Range": "bytes=0-", **_bearer(token)}, timeout=120) as r:
            assert r.status_code == 206
            assert r.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
            for chunk in r.iter_bytes():
                received += len(chunk)
        assert received == size
        growth_mib = (_peak_rss_kib(server.proc.pid) - before) / 1024
        print(f"peak RSS growth serving a {size >> 20} MiB range: {growth_mib:.1f} MiB")
        assert growth_mib < 64, f"the server's peak RSS grew by {growth_mib:.0f} MiB for one range request"
    finally:
        server.stop()


@pytest.mark.integration
def test_enroll_token_and_export_through_the_cli(tmp_path: Path, mosquitto: Mosquitto, bundle: Path) -> None:
    keys = make_keys(tmp_path)
    server = FleetServer(tmp_path, mosquitto.url, keys).start()
    try:
        server.cli(
            "release", str(bundle), "--keys", str(keys), "--server", server.url, "--token", server.token
        )
        # Enrollment against the server issues the robot's HTTP token beside its broker password.
        out = server.cli_json("devices", "enroll", "robot-7", "--out", str(tmp_path / "enroll"))
        token_file = Path(out["files"]["http_token"])
        assert token_file == tmp_path / "enroll" / "robot-7.http-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        device_token = token_file.read_text().strip()
        # ... and registers the robot, so it can be grouped before its first connection.
        assert server.cli_json("devices", "show", "robot-7")["device_id"] == "robot-7"
        # Enrolling it again (a replaced robot) is no error; its HTTP token is rotated.
        again = server.cli_json("devices", "enroll", "robot-7", "--out", str(tmp_path / "enroll-again"))
        device_token = Path(again["files"]["http_token"]).read_text().strip()
        # Export needs a token: without one, one line and a non-zero exit; nothing written.
        env = {k: v for k, v in os.environ.items() if k not in ("LINESIDE_SERVER", "LINESIDE_TOKEN")}
        cp = subprocess.run(
            [*_fleet(), "export", "shapes@1.0.0", "--out", str(tmp_path / "usb0"), "--server", server.url],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert cp.returncode != 0 and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
        assert "Traceback" not in cp.stderr and not (tmp_path / "usb0").exists()
        # A wrong token: refused by the server, one line.
        cp = subprocess.run(
            [*_fleet(), "export", "shapes@1.0.0", "--out", str(tmp_path / "usb1"), "--server", server.url,
             "--token", "lsf_wrong"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert cp.returncode != 0 and "401" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
        # --token (here the robot's own device token: it reads targets) exports a verifiable release.
        cp = subprocess.run(
            [*_fleet(), "export", "shapes@1.0.0", "--out", str(tmp_path / "usb2"), "--server", server.url,
             "--token", device_token],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert cp.returncode == 0, cp.stderr
        # LINESIDE_SERVER / LINESIDE_TOKEN like every other command (server.cli sets both).
        server.cli("export", "shapes@1.0.0", "--out", str(tmp_path / "usb3"))
        for usb in ("usb2", "usb3"):
            cp = subprocess.run(
                [*_edge_agent(), "verify", str(tmp_path / usb), "--root-json", str(keys / "root.json"),
                 "--state-dir", str(tmp_path / f"verify-{usb}")],
                capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
            assert cp.returncode == 0, cp.stdout + cp.stderr
        # The simulated fleet downloads with a device token as a real agent does.
        from sim.fleet import ReleaseCheck

        assert ReleaseCheck(server.url, token=device_token).exists("shapes", "1.0.0")
        wrong = ReleaseCheck(server.url, token="lsf_wrong")
        assert not wrong.exists("shapes", "1.0.0") and wrong.refused is not None and "401" in wrong.refused
        # `fleet devices token` rotates: the enrollment's token stops working, the new one works.
        server.cli("devices", "token", "robot-7", "--out", str(token_file))
        assert token_file.read_text().strip() != device_token
        manifest = next(p for p in (tmp_path / "usb2" / "targets" / "shapes" / "1.0.0").iterdir())
        url = f"{server.url}/tuf/targets/shapes/1.0.0/{manifest.name}"
        assert httpx.get(url, headers=_bearer(device_token), timeout=10).status_code == 401
        assert httpx.get(url, headers=_bearer(token_file.read_text().strip()), timeout=10).status_code == 200
    finally:
        server.stop()


def _fleet() -> list[str]:
    from tests.fleet_support import _script

    return _script("fleet", "fleet_server.cli")


def _edge_agent() -> list[str]:
    from tests.fleet_support import _script

    return _script("edge-agent", "edge_agent.cli")


@pytest.mark.integration
def test_a_real_agent_installs_over_http_with_its_device_token(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    edge_agent_process: Callable[..., AgentProcess],
) -> None:
    """One ``edge-agent run`` with ``[updates] token_file``: a rollout installs 2.0.0 over HTTP.
    The same update with no token is refused by the server (reason ``unauthorized``)."""
    from edge_agent.config import load_config
    from edge_agent.updates import daemon_updater
    from tests.fault_support import LineRig, persistent_broker

    line = LineRig(tmp_path, persistent_broker(mosquitto_factory), edge_agent_process, devices=1)
    line.start()
    try:
        line.release("2.0.0")
        wait_until(
            lambda: line.devices().get("line-1", {}).get("active_model") == "shapes@1.0.0", 60, what="online"
        )
        # Without its token (a copy of the config with no token_file) the server refuses the files.
        cfg = load_config(line.config("line-1"))
        assert cfg.updates is not None and cfg.updates.token_file == line.token_file("line-1")
        no_token = cfg.model_copy(
            update={
                "state_dir": tmp_path / "no-token-state",
                "updates": cfg.updates.model_copy(update={"token_file": None}),
            }
        )
        refused = daemon_updater(no_token).deploy("shapes", "2.0.0", cmd_id="no-token")
        assert refused.status != "installed" and refused.reason == "unauthorized", refused
        # With it, a real rollout to the real agent installs the release.
        rid = line.rollout("2.0.0", soak="0s")

        def installed() -> bool:
            state = line.rollout_state(rid)
            assert state["state"] not in ("halted", "aborted"), state["devices"]
            events = line.api("GET", "/devices/line-1/events", params={"kind": "update.installed"})
            return any((e.get("model") or {}).get("version") == "2.0.0" for e in events)

        try:
            wait_until(installed, 90, what="update.installed 2.0.0 from the agent")
        finally:
            print(line.rollout_state(rid))
        wait_until(
            lambda: line.devices()["line-1"]["active_model"] == "shapes@2.0.0", 30, what="2.0.0 active"
        )
    finally:
        line.stop()
        print(f"--- fleet serve ---\n{line.server.log()[-3000:]}")


def test_an_unreadable_token_file_is_a_config_error_not_retried(tmp_path: Path) -> None:
    """A missing or empty token file is the robot's configuration, not the network: refused at
    once with reason ``not_configured`` and no download attempt (no backoff)."""
    from tests.updates_support import FakeHost, World, tuf_http_server

    w = World(tmp_path)
    w.release("1.0.0")
    (tmp_path / "empty-token").write_text("\n")
    with tuf_http_server(w.repo_dir) as (host, port):
        for token_file in (tmp_path / "missing-token", tmp_path / "empty-token"):
            u = w.updater(FakeHost(), repository_url=f"http://{host}:{port}", token_file=token_file)
            slept: list[float] = []
            u.sleep = slept.append  # record the backoff instead of waiting it out
            out = u.deploy("tiny", "1.0.0", cmd_id=f"t-{token_file.name}")
            assert out.status == "rejected" and out.reason == "not_configured", out
            assert slept == [] and str(token_file) in out.message
