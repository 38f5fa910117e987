"""OpenAI-compatible endpoint with the fake generator: shapes, streaming frames, retrieval, errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from services.chat.generators.fake import FakeGenerator
from services.core.container import KB
from tests.services.api.chat_harness import answer_requests, fake_chat_app

Q1 = "How long is the warranty on the Lumo desk lamp?"


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator()


@pytest.fixture
def client(make_kb: Callable[..., KB], fake: FakeGenerator) -> Iterator[TestClient]:
    with fake_chat_app(make_kb(generator="fake"), fake) as (_, c):
        yield c


def _complete(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_models_list_collections(client: TestClient) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["fake", "kb:shop"]


def test_kb_model_retrieves_cites_and_reuses_across_stateless_turns(
    client: TestClient, fake: FakeGenerator
) -> None:
    msgs = [{"role": "user", "content": Q1}]
    r1 = _complete(client, model="kb:shop", messages=msgs)
    assert r1["object"] == "chat.completion" and r1["choices"][0]["finish_reason"] == "stop"
    answer = r1["choices"][0]["message"]["content"]
    assert r1["citations"][0]["source_id"] == "lumo-manual" and r1["citations"][0]["page"] == 1
    u1 = r1["usage"]
    assert u1["total_tokens"] == u1["prompt_tokens"] + u1["completion_tokens"]
    assert "Sources:" in answer_requests(fake)[-1].messages[-1]["content"]
    # turn 2 from a stateless client: it sends back the plain history; kb restores turn 1's passages
    msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Does it cover falls?"}]
    r2 = _complete(client, model="kb:shop", messages=msgs)
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= u1["prompt_tokens"] + u1["completion_tokens"] - fake.block_size
    assert r2["citations"] and r2["citations"][0]["page"] == 1


def test_plain_model_passes_messages_through(client: TestClient, fake: FakeGenerator) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    r = _complete(client, model="fake", messages=msgs, max_tokens=3)
    assert fake.requests[-1].messages == msgs and fake.requests[-1].max_tokens == 3
    assert r["choices"][0]["finish_reason"] == "length" and "citations" not in r


def test_stream_frames_match_the_non_streamed_answer(client: TestClient) -> None:
    body = {"model": "kb:shop", "messages": [{"role": "user", "content": "When do orders ship?"}]}
    whole = _complete(client, **body)
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = [line[6:] for line in raw.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in raw.split("\n\n") if line)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["citations"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "kb:nope", "messages": [{"role": "user", "content": "hi"}]}, 404),
        ({"model": "kb:shop", "messages": []}, 422),
        ({"model": "kb:shop", "messages": [{"role": "assistant", "content": "hi"}]}, 422),
        (
            {
                "model": "fake",
                "messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "x"}],
            },
            422,
        ),
        ({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 422),
        ({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 422),
        ({"messages": [{"role": "user", "content": "hi"}]}, 422),
    ],
)
def test_errors(client: TestClient, body: dict, status: int) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status and isinstance(r.json()["detail"], str), r.text


def test_busy_is_429(client: TestClient, fake: FakeGenerator) -> None:
    fake.max_running = 0
    r = client.post(
        "/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["type"] == "GeneratorBusy"
