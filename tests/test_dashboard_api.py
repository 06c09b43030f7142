"""The dashboard's server side in-process: the page and its files are served (and ship as package
data), ``whoami``, the one-request device overview, and the pure health rule."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from fastapi.testclient import TestClient
from setuptools import find_packages

from edge_agent.messages import DeviceState, ModelRef, Telemetry, dump
from fleet_server import auth
from fleet_server.api_dashboard import LOW_CONFIDENCE_DEGRADED, device_health
from fleet_server.app import Services, create_app
from fleet_server.dashboard import STATIC_DIR
from fleet_server.ingest import Inbound
from fleet_server.settings import load_settings

ADMIN = "admin-secret"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[tuple[TestClient, Services]]:
    settings = load_settings(
        overrides={"data_dir": tmp_path / "data", "admin_token": ADMIN, "database_url": db_url}
    )
    svc = Services.build(settings)
    app = create_app(settings, services=svc, background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        yield client, svc
    svc.db.dispose()


_seq: dict[str, int] = {}


def _feed(svc: Services, device: str, channel: Literal["state", "telemetry"], payload: bytes) -> None:
    svc.ingest.write_batch([Inbound(svc.topics.device(device, channel), payload, 0, 1)])


def _online(svc: Services, device: str) -> None:
    state = DeviceState(device_id=device, online=True, active_model=ModelRef(name="shapes", version="1.0.0"))
    _feed(svc, device, "state", dump(state))


def _telemetry(svc: Services, device: str, *, frames: int, low: int, errors: int = 0) -> None:
    _seq[device] = _seq.get(device, 0) + 1
    t = Telemetry(
        device_id=device,
        seq=_seq[device],
        window_start=datetime.now(UTC),
        window_s=1.0,
        frames=frames,
        errors=errors,
        confidence_p50=0.9,
        low_confidence=low,
        model=ModelRef(name="shapes", version="1.0.0"),
    )
    _feed(svc, device, "telemetry", dump(t))


# -- the page -------------------------------------------------------------------------------------


def test_page_and_files_are_served_with_a_strict_policy(env: tuple[TestClient, Services]) -> None:
    client, _ = env
    page = client.get("/", headers={"Authorization": ""})  # the page itself needs no token
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert '<script type="module" src="/static/dashboard.js">' in page.text
    js = client.get("/static/dashboard.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "/api/v1" in js.text
    css = client.get("/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/static/nope.js").status_code == 404


def test_nothing_is_fetched_from_elsewhere() -> None:
    """No CDN, no web fonts: the only absolute URL allowed is the SVG namespace name."""
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        text = (STATIC_DIR / name).read_text()
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)


def test_every_form_control_has_a_label() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    ids = re.findall(r"<(?:input|select|textarea)\b[^>]*\bid=\"([^\"]+)\"", html)
    assert len(ids) >= 6
    for control in ids:
        assert f'<label for="{control}"' in html, control


def test_static_files_ship_as_package_data() -> None:
    """pyproject's package-data ('*': *.html, *.js, *.css) only reaches directories that are packages."""
    assert "fleet_server.static" in find_packages(str(REPO), include=["fleet_server*"])
    pyproject = (REPO / "pyproject.toml").read_text()
    for ext in ("*.html", "*.js", "*.css"):
        assert f'"{ext}"' in pyproject
    assert {"index.html", "dashboard.js", "dashboard.css"} <= {p.name for p in STATIC_DIR.iterdir()}


# -- whoami and the overview ------------------------------------------------------------------------


def test_whoami_names_the_tokens_role(env: tuple[TestClient, Services]) -> None:
    client, svc = env
    assert client.get("/api/v1/whoami").json() == {"role": "admin"}
    viewer = auth.create_token(svc.db, "viewer", "wall screen")
    r = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {viewer}"})
    assert r.json() == {"role": "viewer"}
    assert client.get("/api/v1/whoami", headers={"Authorization": ""}).status_code == 401
    assert client.get("/api/v1/whoami", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_dashboard_devices_carries_latest_telemetry_alerts_and_health(
    env: tuple[TestClient, Services],
) -> None:
    client, svc = env
    for d in ("cam-1", "cam-2", "cam-3"):
        _online(svc, d)
    _telemetry(svc, "cam-1", frames=100, low=50)
    _telemetry(svc, "cam-1", frames=100, low=2)  # the newest window counts
    _telemetry(svc, "cam-2", frames=100, low=60)
    drift = svc.alerts.raise_alert("drift", "camera 3 drifted", device_id="cam-3")
    assert drift is not None
    devices = {d["device_id"]: d for d in client.get("/api/v1/dashboard/devices").json()}
    assert set(devices) == {"cam-1", "cam-2", "cam-3"}
    assert devices["cam-1"]["latest"]["seq"] == _seq["cam-1"]
    assert devices["cam-1"]["latest"]["low_confidence"] == 2
    assert devices["cam-1"]["health"]["status"] == "ok"
    assert devices["cam-2"]["health"]["status"] == "degraded"
    assert devices["cam-3"]["latest"] is None and devices["cam-3"]["open_alerts"] == 1
    assert devices["cam-3"]["health"]["status"] == "degraded"
    client.post(f"/api/v1/alerts/{drift['id']}/ack")
    cam3 = next(d for d in client.get("/api/v1/dashboard/devices").json() if d["device_id"] == "cam-3")
    assert cam3["open_alerts"] == 0 and cam3["health"]["status"] == "unknown"
    # The same facts as the plain device list.
    plain = {d["device_id"]: d for d in client.get("/api/v1/devices").json()}
    for d, row in devices.items():
        assert {k: row[k] for k in plain[d]} == plain[d]


# -- the health rule (pure) -------------------------------------------------------------------------


def _dev(**kw: Any) -> dict[str, Any]:
    return {"online": True, "probation": False, **kw}


def _win(frames: int = 100, low: int = 0, errors: int = 0) -> dict[str, Any]:
    return {"frames": frames, "low_confidence": low, "errors": errors}


@pytest.mark.parametrize(
    ("device", "latest", "alerts", "status"),
    [
        (_dev(online=False), _win(), 0, "offline"),
        (_dev(online=False), _win(errors=5), 3, "offline"),
        (_dev(), None, 0, "unknown"),
        (_dev(), _win(), 0, "ok"),
        (_dev(), _win(errors=1), 0, "failing"),
        (_dev(), _win(frames=0), 0, "failing"),
        (_dev(), _win(low=int(100 * LOW_CONFIDENCE_DEGRADED)), 0, "ok"),
        (_dev(), _win(low=int(100 * LOW_CONFIDENCE_DEGRADED) + 1), 0, "degraded"),
        (_dev(), _win(), 1, "degraded"),
        (_dev(), None, 2, "degraded"),
        (_dev(probation=True), _win(), 0, "probation"),
        (_dev(probation=True), _win(errors=2), 0, "failing"),
    ],
)
def test_device_health(
    device: dict[str, Any], latest: dict[str, Any] | None, alerts: int, status: str
) -> None:
    out = device_health(device, latest, alerts)
    assert out["status"] == status
    assert (status == "ok") == (out["reasons"] == [])
