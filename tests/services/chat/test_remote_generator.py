"""The remote backend against `kb engine-serve`'s app (fake model behind it), over real HTTP semantics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.chat.generators.base import GenerationRequest, GeneratorBusy
from services.chat.generators.fake import FakeGenerator, tokenize
from services.chat.generators.openai_remote import OpenAIRemoteGenerator
from services.core.container import KB
from services.engine_server.app import create_engine_app
from tests.services.chat.fixtures import load_documents


def _remote(app) -> OpenAIRemoteGenerator:  # noqa: ANN001
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine/v1")
    return OpenAIRemoteGenerator("http://engine/v1", "smol", client=client)


def test_remote_generator_streams_text_and_cached_tokens() -> None:
    fake = FakeGenerator()
    app = create_engine_app(fake)
    with TestClient(app):  # runs the lifespan
        remote = _remote(app)
        msgs = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where is my parcel?"},
        ]
        first = asyncio.run(remote.complete(GenerationRequest(msgs, max_tokens=8)))
        expected = "".join(tokenize(fake.answer_for(GenerationRequest(msgs)))[:8])
        assert first.text == expected and first.text.startswith("According to [1]")
        assert (
            first.usage.prompt_tokens > 0
            and first.usage.completion_tokens == 8
            and first.finish_reason == "length"
        )
        follow = [
            *msgs,
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": "And now?"},
        ]
        second = asyncio.run(remote.complete(GenerationRequest(follow, max_tokens=8)))
        assert second.usage.cached_tokens >= first.usage.prompt_tokens  # read from prompt_tokens_details
        assert fake.requests[-1].messages == follow  # the engine server passes messages as they are
        fake.max_running = 0
        with pytest.raises(GeneratorBusy) as busy:
            asyncio.run(remote.start(GenerationRequest(msgs)))
        assert busy.value.retry_after == 2
        models = TestClient(app).get("/v1/models").json()
        assert models["data"][0]["id"] == "fake"


def test_api_chats_through_a_remote_engine_server(make_kb: Callable[..., KB]) -> None:
    """The two-box setup: the API's generator is `remote`, pointing at an engine server."""
    fake = FakeGenerator()
    engine_app = create_engine_app(fake)
    with TestClient(engine_app):
        kb = make_kb(generator="remote")
        kb.generator = _remote(engine_app)
        with TestClient(create_app(kb=kb)) as api:
            load_documents(api)
            sid = api.post("/v1/chat/sessions", json={"collection": "shop"}).json()["id"]
            r = api.post(
                f"/v1/chat/sessions/{sid}/messages", json={"content": "How long is the lamp warranty?"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["citations"][0]["page"] == 1 and r.json()["usage"]["completion_tokens"] > 0
            assert "Sources:" in fake.requests[-1].messages[-1]["content"]
