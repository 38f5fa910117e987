"""JSON log lines carry the request id, also from sync routes that run in the thread pool."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.observability.logs import JsonFormatter, RequestIdFilter, configure_logging, request_id_var
from services.observability.middleware import RequestContext


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """A JSON handler on the root logger, like `kb serve` installs, writing into a buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buf
    root.removeHandler(handler)
    root.setLevel(old_level)


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/work/{item}")
    def work(item: str) -> dict[str, str]:  # sync: runs in the thread pool
        logging.getLogger("kb.test").info("working on %s", item, extra={"item": item})
        return {"ok": item}

    @app.get("/boom")
    def boom() -> None:
        try:
            raise ValueError("bad thing")
        except ValueError:
            logging.getLogger("kb.test").exception("failed")
        return None

    app.add_middleware(RequestContext)
    return app


def test_every_line_of_a_request_has_its_id(json_lines: io.StringIO) -> None:
    with TestClient(_app()) as client:
        r = client.get("/work/7", headers={"x-request-id": "req-abc"})
        assert r.headers["x-request-id"] == "req-abc"
        client.get("/boom")
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    mine = [x for x in lines if x.get("request_id") == "req-abc"]
    work = next(x for x in mine if x["logger"] == "kb.test")
    assert work["message"] == "working on 7" and work["item"] == "7" and work["level"] == "INFO"
    access = next(x for x in mine if x["logger"] == "kb.access")
    assert access["route"] == "/work/{item}" and access["status"] == 200 and access["duration_ms"] >= 0
    failed = next(x for x in lines if x.get("message") == "failed")
    assert "ValueError: bad thing" in failed["exc_info"] and failed["request_id"] != "req-abc"
    assert request_id_var.get() is None  # reset after each request


def test_configure_logging_routes_uvicorn_through_one_handler() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        handler = configure_logging("text")
        assert root.handlers == [handler]
        assert (
            logging.getLogger("uvicorn.error").propagate and not logging.getLogger("uvicorn.access").handlers
        )
        record = logging.makeLogRecord({"msg": "hello", "name": "x", "levelname": "INFO"})
        handler.filter(record)
        assert "[None]: hello" in handler.format(record)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
