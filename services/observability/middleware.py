"""Per-request context: request id (from `X-Request-ID` or new, echoed back), latency metric, access log.

A pure ASGI middleware, not BaseHTTPMiddleware: it must not buffer streaming (SSE) responses, and
their latency is measured to the end of the body. The route label is the matched route's template,
read from the scope after routing; requests that match no route share one label ("unmatched").
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.observability.logs import request_id_var
from services.observability.metrics import observe_request

access_log = logging.getLogger("kb.access")
# probed every few seconds by Prometheus and health checks: counted in metrics, not logged
QUIET_PATHS = ("/metrics", "/healthz", "/readyz")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(scope: Scope) -> str:
    """The caller's id when it is a sane token (it goes into logs verbatim), else a new one."""
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _VALID_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContext:
    def __init__(self, app: ASGIApp, skip_access_log: tuple[str, ...] = QUIET_PATHS) -> None:
        self.app = app
        self.skip_access_log = skip_access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            observe_request(scope["method"], route, status, elapsed)
            if scope["path"] not in self.skip_access_log:
                principal = (scope.get("state") or {}).get("principal")
                access_log.info(
                    "%s %s %d %.1f ms",
                    scope["method"],
                    scope["path"],
                    status,
                    elapsed * 1000,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "key": getattr(principal, "prefix", None),
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )
            request_id_var.reset(token)
