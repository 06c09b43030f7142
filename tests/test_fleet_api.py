"""The fleet HTTP API in-process (no threads, no broker): auth, validation, uploads, TUF serving with
Range, devices, rollouts driven by a fake publisher and synthetic events."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge_agent.messages import DeviceState, Event, ModelRef, Telemetry, dump, parse_command
from fleet_server.app import Services, create_app
from fleet_server.client import ApiError, FleetClient
from fleet_server.ingest import Inbound
from fleet_server.policy import Policy
from fleet_server.rollouts import parse_stages
from fleet_server.settings import RolloutDefaults, load_settings
from lineside_common.errors import ConflictError, NotFoundError
from tests.fleet_support import make_bundle, make_keys, signed_release

ADMIN = "admin-secret"


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))

    def commands(self, kind: str | None = None) -> list[tuple[str, Any]]:
        out = [(t.split("/")[-2], parse_command(p)) for t, p in self.sent]
        return [(d, c) for d, c in out if kind is None or c.type == kind]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bundles")
    return {v: make_bundle(tmp, v) for v in ("1.0.0", "2.0.0")}


@pytest.fixture
def env(tmp_path: Path, keys: Path, db_url: str) -> Iterator[tuple[TestClient, Services, FakePublisher]]:
    """The API, the controller, alerts and the registry on a new database: SQLite, then PostgreSQL."""
    settings = load_settings(
        overrides={
            "data_dir": tmp_path / "data",
            "database_url": db_url,
            "admin_token": ADMIN,
            "online_keys_dir": keys,
            "max_upload_bytes": 2_000_000,
        }
    )
    pub = FakePublisher()
    svc = Services.build(settings, publisher=pub)
    app = create_app(settings, services=svc, background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        yield client, svc, pub
    svc.db.dispose()


def _upload_body(signed: bytes, files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "targets": json.loads(signed),
        "files": {p: base64.b64encode(b).decode() for p, b in files.items()},
    }


def _release(client: TestClient, keys: Path, bundle: Path) -> dict[str, Any]:
    cur = client.get("/tuf/metadata/targets.json")
    signed, files = signed_release(keys, bundle, cur.content if cur.status_code == 200 else None)
    r = client.post("/api/v1/models", json=_upload_body(signed, files))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def _feed(svc: Services, *msgs: tuple[str, str, bytes]) -> None:
    svc.ingest.write_batch([Inbound(svc.topics.device(d, ch), p, 0, 1) for d, ch, p in msgs])  # type: ignore[arg-type]


def _state(d: str, version: str = "1.0.0") -> tuple[str, str, bytes]:
    return (
        d,
        "state",
        dump(DeviceState(device_id=d, online=True, active_model=ModelRef(name="shapes", version=version))),
    )


_seq: dict[str, int] = {}


def _tel(d: str, version: str, p50: float, low: int = 2, frames: int = 100) -> tuple[str, str, bytes]:
    _seq[d] = _seq.get(d, 0) + 1
    t = Telemetry(
        device_id=d,
        seq=_seq[d],
        window_start=datetime.now(UTC),
        window_s=1.0,
        frames=frames,
        confidence_p50=p50,
        low_confidence=low,
        model=ModelRef(name="shapes", version=version),
    )
    return (d, "telemetry", dump(t))


def _ev(d: str, seq: int, kind: str, cmd_id: str | None, **data: Any) -> tuple[str, str, bytes]:
    return (d, "events", dump(Event(device_id=d, seq=seq, kind=kind, cmd_id=cmd_id, data=data)))  # type: ignore[arg-type]


# -- auth ------------------------------------------------------------------------------------------


def test_auth_no_token_unknown_token_viewer_admin(env: tuple[TestClient, Services, FakePublisher]) -> None:
    client, _, _ = env
    assert client.get("/api/v1/devices", headers={"Authorization": ""}).status_code == 401
    r = client.get("/api/v1/devices", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["message"] == "unknown token"
    viewer = client.post("/api/v1/tokens", json={"role": "viewer", "name": "grafana"}).json()["token"]
    vh = {"Authorization": f"Bearer {viewer}"}
    assert client.get("/api/v1/devices", headers=vh).status_code == 200
    assert client.get("/api/v1/rollouts", headers=vh).status_code == 200
    for method, path, body in [
        ("post", "/api/v1/tokens", {"role": "admin"}),
        ("post", "/api/v1/rollouts", {"model": "shapes@1.0.0", "group": "g"}),
        ("patch", "/api/v1/devices/x", {"group": "g"}),
        ("post", "/api/v1/models", {}),
        ("post", "/api/v1/rollback", {"devices": ["x"]}),
    ]:
        r = client.request(method, path, json=body, headers=vh)
        assert r.status_code == 403, (path, r.text)
        assert "admin" in r.json()["message"]
    # Stored hashed: the token itself is nowhere in the database.
    with env[1].db.engine.connect() as c:
        dumped = " ".join(str(row) for row in c.exec_driver_sql("SELECT * FROM tokens").fetchall())
    assert viewer not in dumped and ADMIN not in dumped
    # Open endpoints.
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200


def test_validation_errors_are_clear(env: tuple[TestClient, Services, FakePublisher]) -> None:
    client, _, _ = env
    r = client.post("/api/v1/rollouts", json={"model": "no-version", "group": "g"})
    assert r.status_code == 422 and r.json()["message"].startswith("body.model:")
    r = client.post("/api/v1/rollouts", json={"model": "shapes@9.9.9", "group": "g"})
    assert r.status_code == 404 and "shapes@9.9.9" in r.json()["message"]
    r = client.post("/api/v1/rollouts", json={"model": "a@1", "group": "g", "surprise": 1})
    assert r.status_code == 422 and "surprise" in r.json()["message"]
    r = client.post("/api/v1/tokens", json={"role": "root"})
    assert r.status_code == 422 and r.json()["message"].startswith("body.role:")
    r = client.get("/api/v1/rollouts/nope")
    assert r.status_code == 404 and "nope" in r.json()["message"]
    r = client.post("/api/v1/alerts/12345/ack")
    assert r.status_code == 404
    r = client.post("/api/v1/devices", json={"device_id": "bad id", "group": "g"})
    assert r.status_code == 422
    r = client.post("/api/v1/models", content=b"not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["message"]


def test_upload_verified_and_refused(
    env: tuple[TestClient, Services, FakePublisher], keys: Path, bundles: dict[str, Path], tmp_path: Path
) -> None:
    client, _, _ = env
    info = _release(client, keys, bundles["1.0.0"])
    assert (info["name"], info["version"]) == ("shapes", "1.0.0")
    assert [m["version"] for m in client.get("/api/v1/models").json()] == ["1.0.0"]
    assert client.get("/api/v1/models/shapes/1.0.0").json()["manifest"]["name"] == "shapes"

    # Signed by a key the root does not trust: refused, nothing published.
    other = make_keys(tmp_path / "other")
    signed, files = signed_release(other, bundles["2.0.0"], client.get("/tuf/metadata/targets.json").content)
    r = client.post("/api/v1/models", json=_upload_body(signed, files))
    assert r.status_code == 400 and r.json()["error"] == "verification_failed", r.text
    assert "not signed" in r.json()["message"]
    # Right key, but a file swapped after signing.
    signed, files = signed_release(keys, bundles["2.0.0"], client.get("/tuf/metadata/targets.json").content)
    tampered = dict(files)
    path = next(p for p in files if p.endswith("model.onnx"))
    tampered[path] = files[path][:-1] + bytes([files[path][-1] ^ 1])
    r = client.post("/api/v1/models", json=_upload_body(signed, tampered))
    assert r.status_code == 400 and "sha256" in r.json()["message"]
    assert [m["version"] for m in client.get("/api/v1/models").json()] == ["1.0.0"]
    # The honest upload still works after the refusals.
    r = client.post("/api/v1/models", json=_upload_body(signed, files))
    assert r.status_code == 201


def test_upload_size_bound(env: tuple[TestClient, Services, FakePublisher]) -> None:
    client, _, _ = env
    r = client.post("/api/v1/models", json={"targets": {}, "files": {"a/1/x": "A" * 2_100_000}})
    assert r.status_code == 413 and "limit" in r.json()["message"]


def test_tuf_serving_with_ranges(
    env: tuple[TestClient, Services, FakePublisher], keys: Path, bundles: dict[str, Path]
) -> None:
    client, svc, _ = env
    info = _release(client, keys, bundles["1.0.0"])
    for name in ("root.json", "1.root.json", "timestamp.json", "snapshot.json", "targets.json"):
        r = client.get(f"/tuf/metadata/{name}", headers={"Authorization": ""})
        assert r.status_code == 200, name
    meta = info["files"]["selftest.npz"]
    rel = f"shapes/1.0.0/{meta['sha256']}.selftest.npz"
    whole = client.get(f"/tuf/targets/{rel}").content
    assert len(whole) == meta["length"]
    r = client.get(f"/tuf/targets/{rel}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == whole[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(whole)}"
    r = client.get(f"/tuf/targets/{rel}", headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == whole[100:]
    r = client.get(f"/tuf/targets/{rel}", headers={"Range": "bytes=-5"})
    assert r.content == whole[-5:]
    r = client.get(f"/tuf/targets/{rel}", headers={"Range": f"bytes={len(whole)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(whole)}"
    # By sha256 through the API too.
    r = client.get(f"/api/v1/artifacts/{meta['sha256']}", headers={"Range": "bytes=0-3"})
    assert r.status_code == 206 and r.content == whole[:4]
    # Path traversal and odd names are refused.
    secret = svc.settings.data_dir / "admin.token"
    secret.write_text("x")
    for bad in ("../../admin.token", "shapes/../../../admin.token", "%2e%2e/%2e%2e/admin.token", "shapes//x"):
        assert client.get(f"/tuf/targets/{bad}").status_code == 404, bad
    assert client.get("/tuf/metadata/..%2Fadmin.token").status_code == 404
    assert client.get("/tuf/metadata/fleet.db").status_code == 404


def test_devices_registry_and_tags(env: tuple[TestClient, Services, FakePublisher]) -> None:
    client, svc, _ = env
    _feed(svc, _state("cam-1"), _state("cam-2", "0.9.0"), _tel("cam-1", "1.0.0", 0.9))
    devs = {d["device_id"]: d for d in client.get("/api/v1/devices").json()}
    assert devs["cam-1"]["online"] and devs["cam-1"]["active_model"] == "shapes@1.0.0"
    assert devs["cam-2"]["active_model"] == "shapes@0.9.0"
    r = client.patch("/api/v1/devices/cam-1", json={"group": "line-3", "tags": ["canary", "north"]})
    assert r.json()["group"] == "line-3" and r.json()["tags"] == ["canary", "north"]
    assert [d["device_id"] for d in client.get("/api/v1/devices", params={"group": "line-3"}).json()] == [
        "cam-1"
    ]
    assert [d["device_id"] for d in client.get("/api/v1/devices", params={"tag": "north"}).json()] == [
        "cam-1"
    ]
    show = client.get("/api/v1/devices/cam-1").json()
    assert show["recent_telemetry"][0]["confidence_p50"] == pytest.approx(0.9)
    # The Last Will (composed at connect time, so with an OLD since) still takes it offline.
    lwt = DeviceState(device_id="cam-2", online=False, since=datetime(2020, 1, 1, tzinfo=UTC))
    _feed(svc, ("cam-2", "state", dump(lwt)))
    assert client.get("/api/v1/devices/cam-2").json()["online"] is False
    assert "lineside_devices_online 1" in client.get("/metrics").text


def _setup_fleet(
    client: TestClient, svc: Services, keys: Path, bundles: dict[str, Path], n: int = 3
) -> list[str]:
    _release(client, keys, bundles["1.0.0"])
    _release(client, keys, bundles["2.0.0"])
    ids = [f"cam-{i}" for i in range(n)]
    for d in ids:
        _feed(svc, _state(d), *[_tel(d, "1.0.0", 0.9) for _ in range(3)])
        client.patch(f"/api/v1/devices/{d}", json={"group": "line"})
    return ids


def _answer(svc: Services, pub: FakePublisher, seq0: int, *, bad: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for i, (d, cmd) in enumerate(pub.commands("deploy")):
        evs = [
            _ev(d, seq0 + 10 * i + k, kind, cmd.cmd_id)
            for k, kind in enumerate(["update.started", "update.installed", "probation.started"])
        ]
        if d in bad:
            evs.append(_ev(d, seq0 + 10 * i + 5, "rollback", cmd.cmd_id, reason="probation: too slow"))
        else:
            evs.append(_ev(d, seq0 + 10 * i + 5, "probation.passed", cmd.cmd_id))
        _feed(svc, *evs)


def test_rollout_through_the_api(
    env: tuple[TestClient, Services, FakePublisher], keys: Path, bundles: dict[str, Path]
) -> None:
    client, svc, pub = env
    _setup_fleet(client, svc, keys, bundles)
    r = client.post(
        "/api/v1/rollouts",
        json={
            "model": "shapes@2.0.0",
            "group": "line",
            "stages": "1,100%",
            "soak": "0s",
            "min_gate_frames": 50,
        },
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert [d for d, _ in pub.commands("deploy")] == ["cam-0"]  # the canary only
    # Overlapping rollout refused while this one runs.
    r2 = client.post("/api/v1/rollouts", json={"model": "shapes@2.0.0", "devices": ["cam-0"]})
    assert r2.status_code == 409 and rid in r2.json()["message"]
    assert set(r2.json()) == {"message", "field"} and r2.json()["field"] == "devices"
    with pytest.raises(ConflictError) as busy:  # typed: the API branches on it, not on the text
        svc.controller.create("shapes", "2.0.0", ["cam-0"], parse_stages("100%"), Policy())
    assert busy.value.reason == "devices_busy" and busy.value.field == "devices"
    _answer(svc, pub, 100)
    # Three windows: the gate's Mann-Whitney test needs at least 3 a side (2 against 3 can never
    # reach p < 0.05, so it would stay inconclusive).
    _feed(svc, *[_tel("cam-0", "2.0.0", 0.91) for _ in range(3)])
    svc.controller.tick_all()
    svc.controller.tick_all()
    assert sorted(d for d, _ in pub.commands("deploy")) == ["cam-0", "cam-1", "cam-2"]
    pub.sent = [s for s in pub.sent if not s[0].endswith("cam-0/cmd")]
    _answer(svc, pub, 500)
    for d in ("cam-1", "cam-2"):
        _feed(svc, _tel(d, "2.0.0", 0.92))
    svc.controller.tick_all()
    svc.controller.tick_all()
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["state"] == "succeeded", st["history"]
    assert [s["counts"] for s in st["stages"]] == [{"passed": 1}, {"passed": 2}]
    assert client.post(f"/api/v1/rollouts/{rid}/pause").status_code == 409


def test_quality_gate_halts_and_alerts(
    env: tuple[TestClient, Services, FakePublisher], keys: Path, bundles: dict[str, Path]
) -> None:
    client, svc, pub = env
    _setup_fleet(client, svc, keys, bundles)
    rid = client.post(
        "/api/v1/rollouts",
        json={
            "model": "shapes@2.0.0",
            "group": "line",
            "stages": "1,100%",
            "soak": "0s",
            "min_gate_frames": 50,
        },
    ).json()["id"]
    _answer(svc, pub, 100)
    _feed(svc, *[_tel("cam-0", "2.0.0", 0.5, low=70) for _ in range(3)])
    svc.controller.tick_all()
    svc.controller.tick_all()
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["state"] == "halted" and "confidence p50 dropped" in st["reason"]
    assert [d for d, _ in pub.commands("deploy")] == ["cam-0"]  # the others never got it
    assert [d for d, _ in pub.commands("rollback")] == ["cam-0"]
    alerts = client.get("/api/v1/alerts").json()
    halt = [a for a in alerts if a["kind"] == "rollout.halted"]
    assert len(halt) == 1 and "confidence" in halt[0]["message"] and halt[0]["rollout_id"] == rid
    acked = client.post(f"/api/v1/alerts/{halt[0]['id']}/ack").json()
    assert acked["acknowledged"] is True
    assert all(a["id"] != halt[0]["id"] for a in client.get("/api/v1/alerts", params={"open": True}).json())


def test_pause_resume_abort_and_manual_rollback(
    env: tuple[TestClient, Services, FakePublisher], keys: Path, bundles: dict[str, Path]
) -> None:
    client, svc, pub = env
    _setup_fleet(client, svc, keys, bundles)
    rid = client.post(
        "/api/v1/rollouts",
        json={"model": "shapes@2.0.0", "devices": ["cam-1", "cam-2"], "stages": "1,100%", "soak": "0s"},
    ).json()["id"]
    assert client.post(f"/api/v1/rollouts/{rid}/pause").json()["state"] == "paused"
    assert (
        client.post(f"/api/v1/rollouts/{rid}/pause").json()["state"] == "paused"
    )  # pausing twice is harmless
    assert client.post(f"/api/v1/rollouts/{rid}/resume").json()["state"] == "running"
    r = client.post(f"/api/v1/rollouts/{rid}/abort", json={"rollback": True}).json()
    assert r["state"] == "aborted"
    assert [d for d, _ in pub.commands("rollback")] == ["cam-1"]
    assert client.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409
    out = client.post("/api/v1/rollback", json={"group": "line", "reason": "bad batch"}).json()
    assert sorted(s["device_id"] for s in out["sent"]) == ["cam-0", "cam-1", "cam-2"]
    assert client.post("/api/v1/rollback", json={"devices": ["ghost"]}).status_code == 404


def test_drift_event_becomes_one_alert(env: tuple[TestClient, Services, FakePublisher]) -> None:
    client, svc, _ = env
    ev = _ev("cam-9", 7, "drift", None, p50=0.6)
    _feed(svc, ev)
    _feed(svc, ev)  # redelivered
    drift = [a for a in client.get("/api/v1/alerts").json() if a["kind"] == "drift"]
    assert len(drift) == 1 and drift[0]["device_id"] == "cam-9"


def test_python_client_over_the_app(env: tuple[TestClient, Services, FakePublisher]) -> None:
    client, _, _ = env
    fc = FleetClient("http://testserver", ADMIN, transport=client._transport)
    assert fc.devices() == []
    with pytest.raises(ApiError) as e:
        fc.rollout("missing")
    assert e.value.status == 404 and "missing" in str(e.value)
    tok = fc.create_token("viewer")["token"]
    with pytest.raises(ApiError) as e:
        FleetClient("http://testserver", tok, transport=client._transport).create_token("admin")
    assert e.value.status == 403


def test_device_events_newest_first_filter_and_404(env: tuple[TestClient, Services, FakePublisher]) -> None:
    client, svc, _ = env
    _feed(
        svc,
        _state("cam-9"),
        _ev("cam-9", 0, "agent.started", None),
        _ev("cam-9", 1, "rollback", "c1", reason="confidence_p50 0.31 < 0.60"),
        _ev("cam-9", 1, "rollback", "c1", reason="duplicate delivery"),  # QoS 1 redelivery: same seq
    )
    events = client.get("/api/v1/devices/cam-9/events").json()
    assert [e["seq"] for e in events] == [1, 0]
    assert events[0]["kind"] == "rollback" and events[0]["data"]["reason"].startswith("confidence_p50")
    only = client.get("/api/v1/devices/cam-9/events", params={"kind": "agent.started"}).json()
    assert [e["kind"] for e in only] == ["agent.started"]
    _feed(svc, *(_ev("cam-9", 2 + i, "truth.joined", None) for i in range(5)))
    # Several kinds at once, newest first: a busy kind (truth) cannot push the others out of `limit`.
    marks = client.get(
        "/api/v1/devices/cam-9/events", params={"kind": "rollback,agent.started", "limit": 2}
    ).json()
    assert [e["kind"] for e in marks] == ["rollback", "agent.started"]
    assert client.get("/api/v1/devices/nobody/events").status_code == 404
    assert client.get("/api/v1/devices/cam-9/events", params={"limit": 0}).status_code == 422


def test_patch_of_an_unknown_device_is_404_and_registering_is_explicit(
    env: tuple[TestClient, Services, FakePublisher],
) -> None:
    client, svc, _ = env
    # A typo in an edit must not create a phantom robot (a group rollout would wait for it).
    r = client.patch("/api/v1/devices/robot-O7", json={"group": "line-3"})
    assert r.status_code == 404
    assert client.get("/api/v1/devices").json() == []

    # Registering before the first connection is its own act, for admins only.
    viewer = client.post("/api/v1/tokens", json={"role": "viewer"}).json()["token"]
    r = client.post(
        "/api/v1/devices",
        json={"device_id": "robot-07", "group": "line-3"},
        headers={"Authorization": f"Bearer {viewer}"},
    )
    assert r.status_code == 403
    r = client.post("/api/v1/devices", json={"device_id": "robot-07", "group": "line-3", "tags": ["new"]})
    assert r.status_code == 201
    assert (r.json()["device_id"], r.json()["group"], r.json()["tags"], r.json()["online"]) == (
        "robot-07",
        "line-3",
        ["new"],
        False,
    )
    again = client.post("/api/v1/devices", json={"device_id": "robot-07", "group": "other"})
    assert again.status_code == 409 and again.json()["reason"] == "exists"
    assert [d["device_id"] for d in client.get("/api/v1/devices", params={"group": "line-3"}).json()] == [
        "robot-07"
    ]
    # Now known: edits work, and its first report keeps the group it was given.
    assert client.patch("/api/v1/devices/robot-07", json={"tags": ["canary"]}).status_code == 200
    _feed(svc, _state("robot-07"))
    d = client.get("/api/v1/devices/robot-07").json()
    assert (d["group"], d["tags"], d["online"], d["active_model"]) == (
        "line-3",
        ["canary"],
        True,
        "shapes@1.0.0",
    )


def test_rollout_policy_is_request_over_settings_over_defaults(
    env: tuple[TestClient, Services, FakePublisher],
    keys: Path,
    bundles: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, svc, _ = env
    _setup_fleet(client, svc, keys, bundles)
    monkeypatch.setattr(
        svc.settings,
        "rollout",
        RolloutDefaults(stages="100%", soak_s=7, max_failure_rate=0.3, max_sends=2, gate_timeout_s=45),
    )
    body = {"model": "shapes@2.0.0", "group": "line"}
    # Invalid values: 422 naming the field (None where the parser names none), nothing started.
    for extra, field in (
        ({"soak": "soon"}, "soak"),
        ({"max_failure": "150%"}, None),
        ({"stages": "0"}, "stages"),
    ):
        r = client.post("/api/v1/rollouts", json=body | extra)
        assert r.status_code == 422, r.text
        assert set(r.json()) == {"message", "field"} and r.json()["field"] == field
    r = client.post("/api/v1/rollouts", json=body | {"max_confidence_p50_drop": 1.5})
    assert r.status_code == 422 and r.json()["message"].startswith("body.max_confidence_p50_drop:")
    assert client.get("/api/v1/rollouts").json() == []
    r = client.post("/api/v1/rollouts", json=body | {"max_failure": "20%", "no_baseline": "pass"})
    assert r.status_code == 201, r.text
    policy = r.json()["policy"]
    assert r.json()["stage_sizes"] == ["100%"]  # settings
    assert (policy["soak_s"], policy["max_sends"], policy["gate_timeout_s"]) == (7, 2, 45)  # settings
    assert (policy["max_failure_rate"], policy["no_baseline"]) == (0.2, "pass")  # request
    assert policy["max_confidence_p50_drop"] == 0.1  # the release's manifest (drift.max_p50_drop)
    assert policy["device_timeout_s"] == Policy().device_timeout_s  # built-in default
    assert policy["sampling"] is None
    with pytest.raises(NotFoundError) as missing:
        svc.controller.get("nope")
    assert missing.value.reason == "unknown_rollout" and isinstance(missing.value, LookupError)
