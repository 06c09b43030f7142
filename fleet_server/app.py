"""The fleet server's FastAPI application: the routers, wired to the services.

``create_app(settings)`` builds the services (``services.py``) and serves the HTTP API;
``create_app(settings, background=False)`` gives an app with no threads (API tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fleet_server import api, api_samples, dashboard
from fleet_server.services import ADMIN_TOKEN_FILE, Services
from fleet_server.settings import FleetSettings

__all__ = ["ADMIN_TOKEN_FILE", "Services", "create_app"]


def create_app(
    settings: FleetSettings, *, services: Services | None = None, background: bool = True
) -> FastAPI:
    """The FastAPI app; with ``background`` its lifespan starts and stops the services' threads."""
    svc = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if background:
            svc.start()
        try:
            yield
        finally:
            if background:
                svc.stop()

    app = FastAPI(
        title="Lineside fleet server",
        version="1",
        description="Model registry, TUF repository, device registry, staged rollouts gated on model quality, alerts.",
        lifespan=lifespan,
    )
    app.state.services = svc

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            status_code=422,
            content={"message": f"{where}: {first.get('msg')}", "detail": api.jsonable(errors)},
        )

    api.install(app)
    api_samples.install(app)
    dashboard.install(app)
    return app
