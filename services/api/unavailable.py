"""503 instead of 500 when PostgreSQL or Redis is away, and nothing to do when they come back.

A dependency that is down is not a bug in kb and not the client's fault: the client should retry later,
and a load balancer should see "unavailable", not "internal error". Recovery needs no restart because
nothing here caches a broken connection: the PostgreSQL pool pings a connection before handing it out
(`pool_pre_ping`, storage.db) and drops dead ones, and Redis/kombu reconnect on the next call.

Two layers, because an exception can surface in two places: exception handlers for errors raised in
routes and dependencies, and an ASGI middleware for the ones raised outside the router (another
middleware that reads the database, e.g. API keys) that would otherwise reach Starlette's 500 page.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kb.api.unavailable")

RETRY_AFTER_S = 2

# Connection-level database errors. IntegrityError & co. are DBAPIErrors too, but they are answers
# from a database that is up, so they are not listed here.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # pool exhausted while connections hang on a dead server
)


def _queue_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:
        import kombu.exceptions

        errors.append(kombu.exceptions.OperationalError)
    except ImportError:  # pragma: no cover - celery is a dependency
        pass
    return tuple(errors)


QUEUE_ERRORS = _queue_errors()
_CREDENTIALS = re.compile(r"(\w+://)[^@/\s]+@")


def _reason(exc: BaseException) -> str:
    """The driver's first line, without the SQL, parameters or any password in a URL."""
    inner = getattr(exc, "orig", None) or exc
    text = next((ln.strip() for ln in str(inner).splitlines() if ln.strip()), type(inner).__name__)
    return _CREDENTIALS.sub(r"\1***@", text)[:200]


def classify(exc: BaseException) -> str | None:
    """The 503 detail for a dependency failure, or None if `exc` is something else."""
    if isinstance(exc, DATABASE_ERRORS):
        return f"database unavailable: {_reason(exc)}"
    if QUEUE_ERRORS and isinstance(exc, QUEUE_ERRORS):
        return f"job queue unavailable: {_reason(exc)}"
    return None


def _response(detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=503, content={"detail": detail}, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


class DependencyDown:
    """Pure ASGI (not BaseHTTPMiddleware): it must not buffer streaming answers such as chat SSE."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            detail = classify(exc)
            if detail is None or started:
                raise
            log.warning("%s %s: %s", scope.get("method"), scope.get("path"), detail)
            body = json.dumps({"detail": detail}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode()),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})


def install_unavailable_handlers(app: FastAPI) -> None:
    """Register the 503 mapping on `app` (one call in services.api.app)."""

    async def _handler(request: Request, exc: Exception) -> JSONResponse:
        detail = classify(exc) or "service unavailable"
        log.warning("%s %s: %s", request.method, request.url.path, detail)
        return _response(detail)

    for error in DATABASE_ERRORS + QUEUE_ERRORS:
        app.add_exception_handler(error, _handler)
    app.add_middleware(DependencyDown)
