"""The web UI (issue 8): `/` is the page, `/ui/*` its static files (services/web/static).

Plain HTML, CSS and ES modules: nothing to build, so `kb serve` serves it as installed. The page and
its files hold no data and are public; every data request the page makes carries the API key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

import services.web

STATIC_DIR = Path(services.web.__file__).parent / "static"

# The page keeps the API key in localStorage, so it only runs its own scripts and connects only to
# this origin; originals open as blob: URLs (PDF viewer in a new tab).
_HEADERS = {
    "cache-control": "no-cache",  # revalidate (ETag) so an upgraded kb never runs stale scripts
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
_PAGE_HEADERS = {
    **_HEADERS,
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "x-frame-options": "DENY",
}

router = APIRouter(include_in_schema=False)


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


def install(app: FastAPI) -> None:
    """The one call app.py makes: the page route plus the static mount."""
    app.include_router(router)
    app.mount("/ui", _Static(directory=STATIC_DIR), name="ui")
