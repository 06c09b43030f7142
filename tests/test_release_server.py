"""`fleet release --server` against a real `fleet serve` (and a real Mosquitto): issue 13, holes 1 and 3.

- The symlink attack through the real CLI and server: refused by the client, naming the file;
  an upload that carries key material or a bundle no device could run, signed with the real
  targets key and posted directly, is refused by the server too. Nothing appears under /tuf/.
- A release that fails on the server (its online snapshot key gone) publishes nothing and the
  same `fleet release` succeeds once the key is back; export and a device's verify then work.
- `fleet serve` refuses to start, in one line naming the file it expected, when its online keys
  are missing (the README's old ``snapshot.key`` layout), unreadable or from another key set.
- `fleet release` reads LINESIDE_SERVER / LINESIDE_TOKEN like every other `fleet` command.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tuf.api.metadata import Metadata, TargetFile, Targets

from fleet_server import keys as keymod
from fleet_server import release_check
from tests.fleet_support import REPO, FleetServer, _script, make_bundle, make_keys
from tests.mqtt import Mosquitto, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return make_keys(tmp_path)


@pytest.fixture
def server(tmp_path: Path, mosquitto: Mosquitto, keys: Path) -> Iterator[FleetServer]:
    srv = FleetServer(tmp_path, mosquitto.url, keys)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _env_cli(server: FleetServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`fleet ARGS` with the server and token only in LINESIDE_SERVER / LINESIDE_TOKEN."""
    return server.cli(*args, check=False)


def _signed_upload(keys: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """An upload body signed with the real targets key, bypassing the client's checks (an attacker
    with the targets key, or a modified client)."""
    md = Metadata(Targets(version=1, expires=keymod.expiry(30)))
    for path, data in files.items():
        name, version, _ = path.split("/")
        tf = TargetFile.from_data(path, data, ["sha256"])
        tf.unrecognized_fields["custom"] = {"name": name, "version": version, "device_classes": ["*"]}
        md.signed.targets[path] = tf
    md.sign(keymod.load_signer(keys, "targets"))
    return {
        "targets": json.loads(md.to_bytes()),
        "files": {p: base64.b64encode(d).decode() for p, d in files.items()},
    }


def _bundle_files(bundle: Path, name: str, version: str) -> dict[str, bytes]:
    return {f"{name}/{version}/{p.name}": p.read_bytes() for p in sorted(bundle.iterdir()) if p.is_file()}


def test_symlink_release_is_refused_by_the_client_and_key_material_by_the_server(
    server: FleetServer, keys: Path, tmp_path: Path
) -> None:
    evil = make_bundle(tmp_path, "1.0.0")
    (evil / "model.onnx").unlink()
    (evil / "model.onnx").symlink_to(keys / "private" / "targets.pem")
    cp = _env_cli(server, "release", str(evil), "--keys", str(keys))
    assert cp.returncode == 1, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1 and "model.onnx" in cp.stderr
    assert httpx.get(f"{server.url}/tuf/metadata/targets.json").status_code == 404

    # The server does not rely on the client: the key's bytes as a bundle file, signed for real.
    headers = {"Authorization": f"Bearer {server.token}"}
    good = make_bundle(tmp_path / "good", "1.0.0")
    files = _bundle_files(good, "shapes", "1.0.0")
    files["shapes/1.0.0/notes.txt"] = (keys / "private" / "targets.pem").read_bytes()
    r = httpx.post(
        f"{server.url}/api/v1/models", json=_signed_upload(keys, files), headers=headers, timeout=60
    )
    assert r.status_code == 422, r.text
    assert (r.json()["reason"], r.json()["file"]) == (
        release_check.KEY_MATERIAL,
        "notes.txt",
    )
    # ... and a bundle no device could run.
    files = _bundle_files(good, "shapes", "1.0.0")
    files["shapes/1.0.0/model.onnx"] = b"not a model"
    r = httpx.post(
        f"{server.url}/api/v1/models", json=_signed_upload(keys, files), headers=headers, timeout=60
    )
    assert r.status_code == 422 and r.json()["reason"] == release_check.NOT_RUNNABLE, r.text
    assert httpx.get(f"{server.url}/tuf/metadata/targets.json").status_code == 404
    assert httpx.get(f"{server.url}/tuf/metadata/timestamp.json").status_code == 404
    repo_targets = server.data_dir / "repo" / "targets"
    assert not any(p.is_file() for p in repo_targets.rglob("*"))

    # The honest release, with the server and token from the environment only.
    ok = make_bundle(tmp_path / "ok", "1.0.0")
    cp = _env_cli(server, "release", str(ok), "--keys", str(keys))
    assert cp.returncode == 0, cp.stderr
    assert [m["version"] for m in server.cli_json("models", "list")] == ["1.0.0"]


def test_a_release_failing_on_the_server_publishes_nothing_and_is_retryable(
    server: FleetServer, keys: Path, tmp_path: Path
) -> None:
    assert (
        _env_cli(server, "release", str(make_bundle(tmp_path, "1.0.0")), "--keys", str(keys)).returncode == 0
    )
    ts_before = httpx.get(f"{server.url}/tuf/metadata/timestamp.json").content
    targets_before = httpx.get(f"{server.url}/tuf/metadata/targets.json").content
    bundle = make_bundle(tmp_path, "1.1.0")
    aside = tmp_path / "snapshot.pem.aside"
    (keys / "private" / "snapshot.pem").rename(aside)  # the server's online key goes missing

    cp = _env_cli(server, "release", str(bundle), "--keys", str(keys))
    assert cp.returncode == 1 and "private/snapshot.pem" in cp.stderr, cp.stderr
    assert httpx.get(f"{server.url}/tuf/metadata/timestamp.json").content == ts_before
    assert httpx.get(f"{server.url}/tuf/metadata/targets.json").content == targets_before
    assert httpx.get(f"{server.url}/tuf/metadata/2.targets.json").status_code == 404
    assert [m["version"] for m in server.cli_json("models", "list")] == ["1.0.0"]

    aside.rename(keys / "private" / "snapshot.pem")
    cp = _env_cli(server, "release", str(bundle), "--keys", str(keys))  # the same bundle, again
    assert cp.returncode == 0, cp.stderr
    assert [m["version"] for m in server.cli_json("models", "list")] == ["1.0.0", "1.1.0"]
    usb = tmp_path / "usb"
    cp = _env_cli(server, "export", "shapes@1.1.0", "--server", server.url, "--out", str(usb))
    assert cp.returncode == 0, cp.stderr
    dev = subprocess.run(
        [*_script("edge-agent", "edge_agent.cli"), "verify", str(usb), *_dev_args(tmp_path, keys)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert dev.returncode == 0, dev.stderr


def _dev_args(tmp: Path, keys: Path) -> list[str]:
    return ["--state-dir", str(tmp / "dev"), "--root-json", str(keys / "root.json")]


def _serve_args(data: Path, online: Path) -> list[str]:
    listen = f"127.0.0.1:{free_port()}"
    return [
        "serve",
        "--data-dir",
        str(data),
        "--listen",
        listen,
        "--broker",
        "mqtt://127.0.0.1:9",
        "--online-keys",
        str(online),
    ]


def _break_keys(keys: Path, how: str, tmp: Path) -> Path:
    private = keys / "private"
    if how == "readme_layout":
        # What README step 1 used to say: snapshot.key, timestamp.key and root.json side by side.
        out = tmp / "online"
        out.mkdir()
        shutil.copy(keys / "root.json", out / "root.json")
        shutil.copy(private / "snapshot.pem", out / "snapshot.key")
        shutil.copy(private / "timestamp.pem", out / "timestamp.key")
        return out
    if how == "unreadable":
        (private / "timestamp.pem").write_text(
            "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
        )
        return keys
    other = tmp / "other-keys"
    keymod.init_keys(other)  # a key from another `fleet keys init`
    shutil.copy(other / "private" / "snapshot.pem", private / "snapshot.pem")
    return keys


@pytest.mark.parametrize(
    ("how", "expected_file"),
    [
        ("readme_layout", "private/snapshot.pem"),
        ("unreadable", "private/timestamp.pem"),
        ("wrong", "private/snapshot.pem"),
    ],
)
def test_serve_refuses_to_start_without_usable_online_keys(
    tmp_path: Path, keys: Path, how: str, expected_file: str
) -> None:
    online = _break_keys(keys, how, tmp_path)
    data = tmp_path / "data"
    cp = subprocess.run(
        [*_script("fleet", "fleet_server.cli"), *_serve_args(data, online)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert cp.returncode == 1, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and expected_file in lines[0], cp.stderr
    assert "Traceback" not in cp.stderr
    assert not (data / "repo").exists()  # nothing created before the check
