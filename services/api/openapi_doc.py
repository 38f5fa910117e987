"""Make /openapi.json describe the error bodies kb really sends (found by the schemathesis test).

FastAPI documents every 422 as its own `HTTPValidationError` (`detail`: a list of objects), but kb's
handler (services.api.errors) answers `{"detail": "invalid request: ...", "errors": [...]}` so that
every error has a readable `detail` string. Clients generated from the document would fail to parse
real answers. Also documents FastAPI's 400 for a body it cannot decode, and the 503 that
services.api.unavailable sends when PostgreSQL or Redis is down, on every operation, and the
`text/event-stream` answer of the operations that can stream.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

VALIDATION_ERROR = {
    "title": "HTTPValidationError",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"type": "string", "title": "Detail", "description": "What is wrong, for humans."},
        "errors": {
            "type": "array",
            "title": "Errors",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
UNREADABLE = {
    "description": "The body could not be read at all (e.g. not UTF-8); `detail` says so.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}
UNAVAILABLE = {
    "description": "The database or the job queue is unreachable; retry after `Retry-After` seconds.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["detail"],
                "properties": {"detail": {"type": "string"}},
            }
        }
    },
}


SSE = {  # one server-sent event: its `event` name and its `data` (JSON text)
    "schema": {
        "type": "object",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
    }
}


def _streams(doc: dict[str, Any], route: str, operation: dict[str, Any]) -> bool:
    """Answers with server-sent events: `/events` routes, and bodies with a `stream` flag (chat)."""
    if route.endswith("/events"):
        return True
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref = body.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        body = doc.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
    return "stream" in body.get("properties", {})


def document_errors(app: FastAPI) -> None:
    """Wrap `app.openapi` so the generated document carries kb's real error shapes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas["HTTPValidationError"] = VALIDATION_ERROR
        schemas.pop("ValidationError", None)
        for route, path in doc.get("paths", {}).items():
            for operation in path.values():
                if isinstance(operation, dict) and _streams(doc, route, operation):
                    ok = operation["responses"].setdefault("200", {"description": "OK"})
                    ok.setdefault("content", {}).setdefault("text/event-stream", SSE)
                if isinstance(operation, dict) and "responses" in operation:
                    operation["responses"].setdefault("503", UNAVAILABLE)
                    if "requestBody" in operation:  # FastAPI's own 400 for a body it cannot decode
                        operation["responses"].setdefault("400", UNREADABLE)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
