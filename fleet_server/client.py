"""``FleetClient``: the HTTP API from Python (httpx); the ``fleet`` CLI is a thin shell over it.

Errors: an API answer of 4xx/5xx raises ``ApiError`` (status + the server's one-line message);
a server that cannot be reached raises ``lineside_common.errors.TransportError``. Tests pass an
``httpx.MockTransport`` or a FastAPI app's transport.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from lineside_common.errors import LinesideError, TransportError


class ApiError(LinesideError):
    """The server answered with an error; ``status`` is the HTTP status."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class FleetClient:
    """One server, one token."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport, verify=verify
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        try:
            r = self._http.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach the fleet server at {self.base_url}: {exc}") from exc
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = r.text
            msg = body.get("message") if isinstance(body, dict) else None
            if msg is None and isinstance(body, dict):
                msg = str(body.get("detail"))
            raise ApiError(
                f"{r.status_code}: {msg or body or r.reason_phrase}", status=r.status_code, body=body
            )
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def get_bytes(self, path: str) -> bytes:
        """A binary resource (a sample's JPEG); errors as :meth:`request`."""
        try:
            r = self._http.get(path)
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach the fleet server at {self.base_url}: {exc}") from exc
        if r.status_code >= 400:
            raise ApiError(f"{r.status_code}: {r.text[:200]}", status=r.status_code)
        return r.content

    # models
    def models(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", "/api/v1/models")
        return out

    def model(self, name: str, version: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/api/v1/models/{name}/{version}")
        return out

    def upload_release(self, signed_targets: bytes, files: dict[str, bytes]) -> dict[str, Any]:
        """POST a release signed offline: the targets metadata plus its new files."""
        import json as _json

        body = {
            "targets": _json.loads(signed_targets),
            "files": {p: base64.b64encode(b).decode() for p, b in files.items()},
        }
        out: dict[str, Any] = self.request("POST", "/api/v1/models", json=body)
        return out

    # truth
    def post_truth(
        self, device_id: str, decision_id: str, label: str, dimensions_mm: tuple[float, float] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"device_id": device_id, "decision_id": decision_id, "label": label}
        if dimensions_mm is not None:
            body["dimensions_mm"] = list(dimensions_mm)
        out: dict[str, Any] = self.request("POST", "/api/v1/truth", json=body)
        return out

    def accuracy(
        self,
        *,
        device_id: str | None = None,
        model: str | None = None,
        by_device: bool = False,
        since: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:
        pairs = (("device_id", device_id), ("model", model), ("since", since), ("until", until))
        params: dict[str, Any] = {k: v for k, v in pairs if v is not None}
        if by_device:
            params["by_device"] = "true"
        out: list[dict[str, Any]] = self.request("GET", "/api/v1/accuracy", params=params)
        return out

    # devices
    def devices(self, *, group: str | None = None, tag: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("group", group), ("tag", tag)) if v is not None}
        out: list[dict[str, Any]] = self.request("GET", "/api/v1/devices", params=params)
        return out

    def device(self, device_id: str, *, recent: int = 20) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/api/v1/devices/{device_id}", params={"recent": recent})
        return out

    def device_events(
        self, device_id: str, *, limit: int = 100, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """The device's events, newest first."""
        params: dict[str, Any] = {"limit": limit, **({"kind": kind} if kind else {})}
        out: list[dict[str, Any]] = self.request("GET", f"/api/v1/devices/{device_id}/events", params=params)
        return out

    def add_device(
        self, device_id: str, *, group: str | None = None, tags: list[str] | None = None
    ) -> dict[str, Any]:
        """Register a device before its first connection (``ApiError`` status 409 if it is known)."""
        body: dict[str, Any] = {"device_id": device_id}
        if group is not None:
            body["group"] = group
        if tags is not None:
            body["tags"] = tags
        out: dict[str, Any] = self.request("POST", "/api/v1/devices", json=body)
        return out

    def tag(
        self,
        device_id: str,
        *,
        group: str | None = None,
        tags: list[str] | None = None,
        clear_group: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"clear_group": clear_group}
        if group is not None:
            body["group"] = group
        if tags is not None:
            body["tags"] = tags
        out: dict[str, Any] = self.request("PATCH", f"/api/v1/devices/{device_id}", json=body)
        return out

    def rollback(
        self, *, devices: list[str] | None = None, group: str | None = None, reason: str = "operator rollback"
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason}
        if devices is not None:
            body["devices"] = devices
        if group is not None:
            body["group"] = group
        out: dict[str, Any] = self.request("POST", "/api/v1/rollback", json=body)
        return out

    # rollouts
    def rollouts(self, *, state: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request(
            "GET", "/api/v1/rollouts", params={"state": state} if state else None
        )
        return out

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/api/v1/rollouts/{rollout_id}")
        return out

    def start_rollout(self, model: str, **options: Any) -> dict[str, Any]:
        """``model`` is NAME@VERSION; options as the API's RolloutCreate (devices, group, stages, soak...)."""
        body = {"model": model, **{k: v for k, v in options.items() if v is not None}}
        out: dict[str, Any] = self.request("POST", "/api/v1/rollouts", json=body)
        return out

    def rollout_op(
        self, rollout_id: str, op: str, *, rollback: bool = False, by: str = "", why: str = ""
    ) -> dict[str, Any]:
        body: dict[str, Any] | None = None
        if op == "abort":
            body = {"rollback": rollback}
        elif op == "resume" and (by or why):
            body = {"by": by, "why": why}
        out: dict[str, Any] = self.request("POST", f"/api/v1/rollouts/{rollout_id}/{op}", json=body)
        return out

    # alerts
    def alerts(self, *, open_only: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", "/api/v1/alerts", params={"open": open_only})
        return out

    def ack(self, alert_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"/api/v1/alerts/{alert_id}/ack")
        return out

    # tokens
    def create_token(self, role: str, name: str = "") -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/api/v1/tokens", json={"role": role, "name": name})
        return out

    def tokens(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", "/api/v1/tokens")
        return out
