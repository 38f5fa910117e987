"""Fixtures and an ASGI harness for the chat API tests (fake generator; no model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.chat.generators.fake import FakeGenerator
from services.chat.rewrite import REWRITE_SYSTEM
from services.core.container import KB
from tests.services.chat.fixtures import load_documents


@contextmanager
def fake_chat_app(kb: KB, fake: FakeGenerator) -> Iterator[tuple[FastAPI, TestClient]]:
    """The real app (real DB, embedder, indexes) with `fake` as its generator and the test documents."""
    kb.generator = fake
    app = create_app(kb=kb)
    with TestClient(app) as client:
        load_documents(client)
        yield app, client


def answer_requests(fake: FakeGenerator) -> list[Any]:
    """The generation requests that answered turns (not the query rewrites)."""
    return [r for r in fake.requests if r.messages[0]["content"] != REWRITE_SYSTEM]


async def call_then_disconnect(
    app: FastAPI, path: str, body: dict[str, Any], after_first_chunk: bool, delay_s: float = 0.1
) -> tuple[int | None, list[bytes]]:
    """Drive the ASGI app directly; the client 'disconnects' after the first body chunk (streaming) or
    after `delay_s` (non-streaming). Returns the status sent (if any) and the body chunks."""
    chunks: list[bytes] = []
    status: list[int] = []
    first = asyncio.Event()
    requested = False
    loop = asyncio.get_running_loop()
    disconnect_at = loop.time() + delay_s

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        # like a server: a receive that is cancelled (Request.is_disconnected polls) loses nothing
        if after_first_chunk:
            await first.wait()
        elif loop.time() < disconnect_at:
            await asyncio.sleep(disconnect_at - loop.time())
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            first.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 30)
    return (status[0] if status else None), chunks
