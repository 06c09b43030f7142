"""The fleet's sample store through its HTTP API (issue 16): stored once, bad input refused, purge.

In-process app (no threads) on SQLite and PostgreSQL; the agent side is in test_samples_agent.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fleet_server.app import Services, create_app
from fleet_server.settings import load_settings

ADMIN = "admin-secret"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jpeg(seed: int, side: int = 32) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf.tobytes())


def meta(device: str, sample_id: str, **over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "format": 1,
        "sample_id": sample_id,
        "decision_id": sample_id,
        "device_id": device,
        "taken_at": 1_800_000_000.0,
        "reason": "low_confidence",
        "model": {"name": "shapes", "version": "1.0.0", "sha256": "ab" * 32},
        "label": "box",
        "confidence": 0.41,
        "probabilities": [0.41, 0.35, 0.24],
        "dimensions_mm": None,
    }
    m.update(over)
    return m


def body(m: dict[str, Any], image: bytes) -> bytes:
    return json.dumps(m).encode() + b"\n" + image


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = load_settings(
        overrides={
            "data_dir": tmp_path / "data",
            "admin_token": ADMIN,
            "database_url": db_url,
            "sample_max_bytes": 20_000,
        }
    )
    svc = Services.build(settings)
    with TestClient(create_app(settings, services=svc, background=False)) as c:
        yield c
    svc.db.dispose()


def device_token(client: TestClient, device: str) -> str:
    r = client.post(f"/api/v1/devices/{device}/token", headers=_bearer(ADMIN))
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def put(client: TestClient, token: str, device: str, sample_id: str, data: bytes) -> Any:
    return client.put(
        f"/api/v1/devices/{device}/samples/{sample_id}",
        content=data,
        headers={**_bearer(token), "Content-Type": "application/x-lineside-sample"},
    )


def files(client: TestClient) -> list[Path]:
    svc: Services = client.app.state.services  # type: ignore[attr-defined]  # Starlette's app is typed loosely
    return sorted(p for p in svc.samples.directory.rglob("*.jpg"))


def test_a_sample_is_stored_once_however_often_it_is_sent(client: TestClient) -> None:
    token = device_token(client, "robot-1")
    image = jpeg(1)
    first = put(
        client, token, "robot-1", "000001-000000000007", body(meta("robot-1", "000001-000000000007"), image)
    )
    assert first.status_code == 201 and first.json()["stored"] is True
    again = put(
        client, token, "robot-1", "000001-000000000007", body(meta("robot-1", "000001-000000000007"), image)
    )
    assert again.status_code == 200 and again.json()["stored"] is False
    listed = client.get("/api/v1/samples", headers=_bearer(ADMIN)).json()
    assert listed["total"] == 1
    sample = listed["samples"][0]
    assert sample["decision_id"] == "000001-000000000007" and sample["meta"]["probabilities"] == [
        0.41,
        0.35,
        0.24,
    ]
    # Content-addressed: the file's name is its bytes' hash, and the API serves those bytes.
    (path,) = files(client)
    assert path.name == f"{sample['image_sha256']}.jpg" and path.read_bytes() == image
    got = client.get(f"/api/v1/samples/{sample['id']}/image", headers=_bearer(ADMIN))
    assert got.status_code == 200 and got.content == image
    assert client.get("/api/v1/samples/999999", headers=_bearer(ADMIN)).status_code == 404


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("oversized", 413, "too_large"),
        ("other_device_token", 403, "wrong_device"),
        ("admin_token", 403, "not_a_device"),
        ("not_json", 422, "malformed"),
        ("missing_field", 422, "malformed"),
        ("confidence_out_of_range", 422, "malformed"),
        ("metadata_names_another_device", 422, "malformed"),
        ("not_a_jpeg", 422, "malformed"),
        ("no_separator", 422, "malformed"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_store_nothing(
    client: TestClient, case: str, status: int, reason: str
) -> None:
    token = device_token(client, "robot-1")
    other = device_token(client, "robot-2")
    sid = "000001-000000000001"
    good = meta("robot-1", sid)
    data = body(good, jpeg(2))
    use = token
    if case == "oversized":
        data = body(good, jpeg(3, side=256))
        assert len(data) > 20_000
    elif case == "other_device_token":
        use = other
    elif case == "admin_token":
        use = ADMIN
    elif case == "not_json":
        data = b"{not json\n" + jpeg(2)
    elif case == "missing_field":
        data = body({k: v for k, v in good.items() if k != "label"}, jpeg(2))
    elif case == "confidence_out_of_range":
        data = body(meta("robot-1", sid, confidence=1.5), jpeg(2))
    elif case == "metadata_names_another_device":
        data = body(meta("robot-2", sid), jpeg(2))
    elif case == "not_a_jpeg":
        data = body(good, b"GIF89a" + b"\0" * 100)
    elif case == "no_separator":
        data = json.dumps(good).encode()
    r = put(client, use, "robot-1", sid, data)
    assert r.status_code == status, r.text
    assert r.json()["reason"] == reason and r.json()["message"]
    assert client.get("/api/v1/samples", headers=_bearer(ADMIN)).json()["total"] == 0
    assert files(client) == []


def test_purge_by_device_label_and_time_removes_rows_and_files(client: TestClient) -> None:
    t1, t2 = device_token(client, "robot-1"), device_token(client, "robot-2")
    shared = jpeg(10)  # the same bytes from two devices: one file, two rows
    uploads = [
        (t1, "robot-1", "000001-000000000001", shared, "box", 1_800_000_000.0),
        (t1, "robot-1", "000001-000000000002", jpeg(11), "tube", 1_800_000_100.0),
        (t2, "robot-2", "000001-000000000001", shared, "box", 1_800_000_200.0),
        (t2, "robot-2", "000001-000000000002", jpeg(12), "tube", 1_800_000_300.0),
    ]
    for tok, dev, sid, img, label, at in uploads:
        assert (
            put(client, tok, dev, sid, body(meta(dev, sid, label=label, taken_at=at), img)).status_code == 201
        )
    assert len(files(client)) == 3
    purge = lambda **kw: client.post("/api/v1/samples/purge", json=kw, headers=_bearer(ADMIN))  # noqa: E731
    assert purge().status_code == 422  # no filter: refused, not "everything"
    viewer = client.post("/api/v1/tokens", json={"role": "viewer"}, headers=_bearer(ADMIN)).json()["token"]
    assert (
        client.post("/api/v1/samples/purge", json={"all": True}, headers=_bearer(viewer)).status_code == 403
    )
    # robot-1's samples: its tube file goes; the shared file stays (robot-2 still refers to it).
    assert purge(device="robot-1").json() == {"samples": 2, "files": 1}
    assert len(files(client)) == 2
    # By label, then by time range [since, until).
    assert purge(label="box").json() == {"samples": 1, "files": 1}
    r = purge(since="2027-01-15T08:04:00Z", until="2027-01-15T08:05:01Z")
    assert r.json() == {"samples": 1, "files": 1}, r.text
    assert client.get("/api/v1/samples", headers=_bearer(ADMIN)).json()["total"] == 0
    assert files(client) == []


def test_retention_removes_the_oldest_over_the_byte_limit(client: TestClient) -> None:
    svc: Services = client.app.state.services  # type: ignore[attr-defined]  # Starlette's app is typed loosely
    token = device_token(client, "robot-1")
    images = [jpeg(20 + i) for i in range(4)]
    svc.samples.max_total_bytes = sum(len(i) for i in images[1:])  # room for the newest three
    for i, img in enumerate(images):
        sid = f"000001-00000000000{i}"
        assert put(client, token, "robot-1", sid, body(meta("robot-1", sid), img)).status_code == 201
    left = client.get("/api/v1/samples", headers=_bearer(ADMIN)).json()["samples"]
    assert sorted(s["sample_id"] for s in left) == [f"000001-00000000000{i}" for i in (1, 2, 3)]
    assert len(files(client)) == 3
