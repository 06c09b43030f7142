"""The operator dashboard: one static page (``static/index.html`` + ``dashboard.js`` + ``dashboard.css``)
served at ``/``, talking to ``/api/v1`` with the operator's bearer token.

No build step and nothing fetched from the internet: the page, its script and its stylesheet ship
as package data. A strict Content-Security-Policy keeps the page to its own origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Everything from this origin only; no inline script; API calls to ourselves. blob: images: the
# labelling page fetches a sample's JPEG with the bearer token (an <img src> cannot send it).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page itself holds no data; always fetch the current one after an upgrade.
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and its files under ``/static/``; add the dashboard's API routes."""
    from fleet_server.api_dashboard import router

    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")


__all__ = ["CSP", "STATIC_DIR", "install"]
