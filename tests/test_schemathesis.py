"""The fleet HTTP API under schemathesis, generated from its own ``/openapi.json``: no 5xx, ever.

In-process over ASGI (no sockets), with an admin token so the generated requests get past auth and
into the handlers, and a database that already holds a device, its telemetry and events, a signed
release and a rollout, so lookups by generated ids hit real rows as well as missing ones.
Bounded (``max_examples`` per operation) to stay well under a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from edge_agent.messages import DeviceState, Event, ModelRef, Telemetry, dump  # noqa: E402
from fleet_server.app import Services, create_app  # noqa: E402
from fleet_server.ingest import Inbound  # noqa: E402
from fleet_server.settings import load_settings  # noqa: E402
from tests.fleet_support import make_bundle, make_keys, signed_release  # noqa: E402
from tests.pg_support import PostgresDatabases  # noqa: E402

ADMIN = "schemathesis-admin-token"
MAX_UPLOAD = 300_000


def _seed(client: TestClient, svc: Services, tmp: Path, keys: Path) -> None:
    import base64

    signed, files = signed_release(keys, make_bundle(tmp, "1.0.0"), None)
    body = {
        "targets": json.loads(signed),
        "files": {p: base64.b64encode(d).decode() for p, d in files.items()},
    }
    r = client.post("/api/v1/models", json=body)
    assert r.status_code == 201, r.text
    now = datetime.now(UTC)
    ref = ModelRef(name="shapes", version="1.0.0", sha256="ab" * 32)
    topics = svc.topics
    items = [
        Inbound(
            topics.device("robot-1", "state"),
            dump(DeviceState(device_id="robot-1", online=True, active_model=ref)),
        ),
        *(
            Inbound(
                topics.device("robot-1", "telemetry"),
                dump(
                    Telemetry(device_id="robot-1", seq=i, window_start=now, window_s=5, frames=100, model=ref)
                ),
            )
            for i in range(3)
        ),
        Inbound(topics.device("robot-1", "events"), dump(Event(device_id="robot-1", seq=0, kind="drift"))),
    ]
    svc.ingest.write_batch(items)
    r = client.post(
        "/api/v1/rollouts", json={"model": "shapes@1.0.0", "devices": ["robot-1"], "stages": "100%"}
    )
    assert r.status_code in (201, 409, 422), r.text


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Services]]:
    """The seeded API, once on SQLite and once on a PostgreSQL database of its own."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    keys = make_keys(tmp)
    pg: PostgresDatabases | None = None
    database_url = f"sqlite:///{tmp / 'fleet.db'}"
    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres_databases")
        database_url = pg.create()
    settings_ = load_settings(
        overrides={
            "data_dir": tmp / "data",
            "database_url": database_url,
            "admin_token": ADMIN,
            "online_keys_dir": keys,
            "max_upload_bytes": MAX_UPLOAD,
        }
    )
    svc = Services.build(settings_, publisher=_NullPublisher())
    app = create_app(settings_, services=svc, background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        _seed(client, svc, tmp, keys)
        yield client, svc
    svc.db.dispose()
    if pg is not None:
        pg.drop(database_url)


class _NullPublisher:
    def publish(self, topic: str, payload: bytes) -> None:
        pass


@pytest.fixture(scope="module")
def operations(api: tuple[TestClient, Services]) -> dict[str, Any]:
    client, _ = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    ops = {}
    for result in schema.get_all_operations():
        op = result.ok()
        ops[f"{op.method.upper()} {op.path}"] = op
    return ops


def _spec_operations() -> list[str]:
    # Read the operation list from the app's spec at collection time (no services needed).
    from fastapi import FastAPI

    from fleet_server import api as api_module

    bare = FastAPI()
    api_module.install(bare)
    out = []
    for path, item in bare.openapi()["paths"].items():
        for method, spec in item.items():
            out.append((f"{method.upper()} {path}", "positive"))
            # Negative cases need something to break: parameters or a request body.
            if spec.get("parameters") or spec.get("requestBody"):
                out.append((f"{method.upper()} {path}", "negative"))
    return sorted(out)


@pytest.mark.parametrize(("name", "mode"), _spec_operations())
def test_api_never_answers_5xx(operations: dict[str, Any], name: str, mode: str) -> None:
    op = operations[name]
    strategy = op.as_strategy(
        generation_mode=GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    )

    @given(case=strategy)
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def run(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"}, checks=[not_a_server_error])

    try:
        run()
    except Unsatisfiable:
        if mode == "positive":
            raise
        pytest.skip(f"{name}: every input it takes is valid (free-form path strings): nothing negative")


def test_openapi_covers_the_api(api: tuple[TestClient, Services]) -> None:
    # The fuzzing above is only as wide as the spec: every /api/v1 route must be in it.
    client, _ = api
    paths = client.get("/openapi.json").json()["paths"]
    for expected in ("/api/v1/models", "/api/v1/devices", "/api/v1/rollouts", "/api/v1/alerts"):
        assert expected in paths


def test_oversized_upload_is_refused_by_the_configured_bound(api: tuple[TestClient, Services]) -> None:
    client, svc = api
    before = sorted(p.name for p in svc.settings.effective_repo_dir.rglob("*"))
    big = b'{"targets": {}, "files": {"x": "' + b"A" * MAX_UPLOAD + b'"}}'
    r = client.post("/api/v1/models", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert str(MAX_UPLOAD) in r.json()["message"]

    # Without a Content-Length (chunked), the bound is enforced while streaming.
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_UPLOAD // 10_000 + 2):
            yield b"A" * 10_000

    r = client.post("/api/v1/models", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert sorted(p.name for p in svc.settings.effective_repo_dir.rglob("*")) == before
