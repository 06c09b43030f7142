"""Disk full on the fleet server during a release upload: a clean 507, nothing half-written.

ENOSPC is injected at the repository's write boundary (``atomic_write_bytes``) at every step of
storing a release in turn: each target file, the versioned and current targets metadata, the
snapshot and the timestamp. After each, the repository is byte-for-byte what it was, a device's
TUF client still verifies it, and the same upload succeeds once there is space again.
"""

from __future__ import annotations

import base64
import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge_agent.trust import TrustedRepository
from fleet_server import tuf_repo
from fleet_server.app import Services, create_app
from fleet_server.settings import load_settings
from tests.fleet_support import make_bundle, make_keys, signed_release

ADMIN = "disk-admin"
# Writes of one release: 3 target files, N.targets.json, targets.json, M.snapshot.json,
# snapshot.json, timestamp.json.
WRITES_PER_RELEASE = 8


class _Null:
    def publish(self, topic: str, payload: bytes) -> None:
        pass


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bundles")
    return {v: make_bundle(tmp, v) for v in ("1.0.0", "2.0.0")}


@pytest.fixture
def server(tmp_path: Path, keys: Path) -> Iterator[tuple[TestClient, Services]]:
    settings = load_settings(
        overrides={"data_dir": tmp_path / "data", "admin_token": ADMIN, "online_keys_dir": keys}
    )
    svc = Services.build(settings, publisher=_Null())
    with TestClient(create_app(settings, services=svc, background=False)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        yield client, svc
    svc.db.dispose()


def _body(keys: Path, bundle: Path, current: bytes | None) -> dict[str, Any]:
    signed, files = signed_release(keys, bundle, current)
    return {
        "targets": json.loads(signed),
        "files": {p: base64.b64encode(d).decode() for p, d in files.items()},
    }


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fail_at", range(1, WRITES_PER_RELEASE + 1))
def test_disk_full_at_each_write_is_a_clean_507(
    server: tuple[TestClient, Services],
    keys: Path,
    bundles: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int,
) -> None:
    client, svc = server
    assert client.post("/api/v1/models", json=_body(keys, bundles["1.0.0"], None)).status_code == 201
    repo = svc.settings.effective_repo_dir
    before = _snapshot(repo)
    current = (repo / "metadata" / "targets.json").read_bytes()
    body = _body(keys, bundles["2.0.0"], current)

    real = tuf_repo.atomic_write_bytes
    calls = {"n": 0}

    def full_disk(path: Path | str, data: bytes, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == fail_at:
            # Half a temp file then ENOSPC, as a real full disk does.
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(f"{path}.partial.tmp").write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(tuf_repo, "atomic_write_bytes", full_disk)
    r = client.post("/api/v1/models", json=body)
    assert r.status_code == 507, r.text
    assert "disk full" in r.json()["message"]
    assert _snapshot(repo) == before, "the repository changed after a failed upload"
    assert [m["version"] for m in client.get("/api/v1/models").json()] == ["1.0.0"]
    # A device's TUF client still verifies what is served.
    TrustedRepository.from_directory(tmp_path / "device-md", keys / "root.json", repo).refresh()

    monkeypatch.setattr(tuf_repo, "atomic_write_bytes", real)  # space freed: the same upload works
    r = client.post("/api/v1/models", json=body)
    assert r.status_code == 201, r.text
    trust = TrustedRepository.from_directory(tmp_path / "device-md", keys / "root.json", repo)
    trust.refresh()
    assert set(trust.release("shapes", "2.0.0").targets) == {"manifest.json", "model.onnx", "selftest.npz"}


def test_the_write_count_matches_a_release(
    server: tuple[TestClient, Services], keys: Path, bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards the parametrisation above: every write of an upload is one of the injected points.
    client, _ = server
    real = tuf_repo.atomic_write_bytes
    calls: list[str] = []

    def counting(path: Path | str, data: bytes, **kw: Any) -> None:
        calls.append(Path(path).name)
        real(path, data, **kw)

    monkeypatch.setattr(tuf_repo, "atomic_write_bytes", counting)
    assert client.post("/api/v1/models", json=_body(keys, bundles["1.0.0"], None)).status_code == 201
    assert len(calls) == WRITES_PER_RELEASE, calls
