"""Wires issue 7 into an app in one call: rate limiter, request timeout, request ids/latency, /metrics.

Kept out of app.py so the application factory stays a list of parts. Middleware order (outermost
first): RequestContext (every answer, even a 413 or 504, gets a request id and a latency sample),
RequestTimeout, then the body size limit added by app.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from services.api.auth import announce, require
from services.api.ratelimit import RateLimiter
from services.api.timeouts import RequestTimeout
from services.core.config import Settings
from services.observability.metrics import StateCollector, engine_of, install_metrics
from services.observability.middleware import RequestContext

OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


def install_security(app: FastAPI, settings: Settings) -> None:
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    app.add_middleware(RequestTimeout, seconds=settings.request_timeout_s, exempt=OPEN_PATHS)
    app.add_middleware(RequestContext)

    def kb_db() -> Any:
        kb = getattr(app.state, "kb", None)
        return kb.db if kb is not None else None

    def kb_engine() -> Any:
        kb = getattr(app.state, "kb", None)
        return engine_of(kb.generator) if kb is not None else None

    queue = celery_queue_length(settings) if settings.ingest_runner == "celery" else None
    guard = require("admin") if settings.metrics_auth else None
    install_metrics(app, StateCollector(db=kb_db, engine=kb_engine, queue=queue), guard=guard)
    describe_security(app, settings)
    announce(settings)


def celery_queue_length(settings: Settings) -> Callable[[], int | None]:
    """Tasks waiting in the workers' Redis list (kombu: the queue name under KB_REDIS_PREFIX);
    None when Redis does not answer, so a scrape never fails on it."""
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    key = settings.redis_prefix + settings.worker_queue

    def length() -> int | None:
        try:
            return int(client.llen(key))
        except redis.RedisError:
            return None

    return length


_ERROR = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}


def describe_security(app: FastAPI, settings: Settings) -> None:
    """Make /openapi.json tell the truth about keys: the key dependencies declare the Bearer and X-API-Key
    schemes on every guarded operation, which is wrong while KB_AUTH=off (clients and fuzzers would expect
    401s), and FastAPI cannot know the 401/403/429 answers they give when it is on."""
    inner = app.openapi

    def openapi() -> dict[str, Any]:
        doc = inner()
        if not settings.auth_required:
            doc.get("components", {}).pop("securitySchemes", None)
        for path in doc.get("paths", {}).values():
            for op in path.values():
                if not isinstance(op, dict) or "security" not in op:
                    continue
                if not settings.auth_required:
                    del op["security"]
                    continue
                responses = op.setdefault("responses", {})
                responses.setdefault("401", {"description": "Missing or invalid API key", "content": _ERROR})
                responses.setdefault("403", {"description": "The key lacks the scope", "content": _ERROR})
                if settings.effective_rate_limit:
                    responses.setdefault("429", {"description": "KB_RATE_LIMIT hit; see Retry-After"})
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
