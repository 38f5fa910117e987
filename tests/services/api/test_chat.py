"""Chat sessions API with the deterministic fake generator: shapes, SSE framing, errors, cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.chat.generators.fake import FakeGenerator
from services.core.container import KB
from tests.services.api.chat_harness import answer_requests, call_then_disconnect, fake_chat_app
from tests.services.chat.fixtures import sse_events


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator()


@pytest.fixture
def chat_app(make_kb: Callable[..., KB], fake: FakeGenerator) -> Iterator[tuple[FastAPI, TestClient]]:
    with fake_chat_app(make_kb(generator="fake"), fake) as pair:
        yield pair


@pytest.fixture
def chat(chat_app: tuple[FastAPI, TestClient]) -> TestClient:
    return chat_app[1]


def _session(client: TestClient, **body: object) -> str:
    r = client.post("/v1/chat/sessions", json={"collection": "shop", **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _say(client: TestClient, sid: str, content: str, **body: object) -> dict:
    r = client.post(f"/v1/chat/sessions/{sid}/messages", json={"content": content, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_turn_shape_citations_history_and_delete(chat: TestClient, fake: FakeGenerator) -> None:
    sid = _session(chat, system_prompt="You work for Lumo.", metadata={"channel": "web"})
    out = _say(chat, sid, "How long is the warranty on the Lumo desk lamp?")
    assert out["message"]["role"] == "assistant" and out["message"]["content"]
    assert set(out["usage"]) == {"prompt_tokens", "cached_tokens", "completion_tokens"}
    assert set(out["latency"]) == {"retrieval_ms", "ttft_ms", "total_ms"}
    first = out["citations"][0]
    assert (first["n"], first["source_id"], first["page"]) == (1, "lumo-manual", 1)
    assert "two years" in first["snippet"] and first["cited"] is True  # the fake answer cites [1]
    assert all(c["source_id"] != "payroll" for c in out["citations"])
    # the prompt numbered exactly these chunks, and the session's system prompt is used
    prompt = answer_requests(fake)[-1].messages
    assert prompt[0]["content"].startswith("You work for Lumo.")
    for c in out["citations"]:
        assert f"[{c['n']}] (" in prompt[-1]["content"]
    out2 = _say(chat, sid, "How many days do I have to return it?")
    page2 = [c for c in out2["citations"] if c["page"] == 2]
    assert page2 and page2[0]["source_id"] == "lumo-manual" and "thirty days" in page2[0]["snippet"]
    history = chat.get(f"/v1/chat/sessions/{sid}").json()
    assert history["metadata"] == {"channel": "web"} and history["collection"] == "shop"
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 2
    assert history["messages"][1]["citations"] == out["citations"]
    assert history["messages"][2]["query"] and history["messages"][3]["content"] == out2["message"]["content"]
    r = chat.delete(f"/v1/chat/sessions/{sid}")
    assert r.status_code == 204 and r.headers["x-kv-dropped"] == "false"
    assert chat.get(f"/v1/chat/sessions/{sid}").status_code == 404
    assert chat.post(f"/v1/chat/sessions/{sid}/messages", json={"content": "hi"}).status_code == 404
    assert chat.delete(f"/v1/chat/sessions/{sid}").status_code == 404


def test_follow_up_is_rewritten_and_prompt_is_append_only(chat: TestClient, fake: FakeGenerator) -> None:
    sid = _session(chat)
    t1 = _say(chat, sid, "How long is the warranty on the Lumo desk lamp?")
    t2 = _say(chat, sid, "Does it cover falls?")
    assert "warranty" in t2["query"].lower()  # retrieval saw a standalone question
    assert t2["citations"][0]["page"] == 1
    p1, p2 = (r.messages for r in answer_requests(fake)[-2:])
    assert p2[: len(p1)] == p1  # turn 1's prompt, unchanged, starts turn 2's
    assert p2[len(p1)] == {"role": "assistant", "content": t1["message"]["content"]}
    # the fake counts cache hits like the engine: turn 1's prompt and answer are served from cache
    covered = t1["usage"]["prompt_tokens"] + t1["usage"]["completion_tokens"]
    assert t2["usage"]["cached_tokens"] >= covered - fake.block_size
    # a passage already shown is referenced by its number, not repeated
    assert p2[-1]["content"].count("two years") == 0 and "[1]" in p2[-1]["content"]


def test_nothing_relevant_says_so_without_generating(chat: TestClient, fake: FakeGenerator) -> None:
    sid = _session(chat)
    before = len(fake.requests)
    out = _say(chat, sid, "What is the boiling point of liquid nitrogen on Neptune?")
    assert out["citations"] == [] and out["message"]["content"] == chat.app.state.kb.settings.chat_no_answer
    assert len(fake.requests) == before and out["usage"]["completion_tokens"] == 0


def test_sse_framing_and_order(chat: TestClient) -> None:
    sid = _session(chat)
    with chat.stream(
        "POST", f"/v1/chat/sessions/{sid}/messages", json={"content": "When do orders ship?", "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    kinds = [k for k, _ in events]
    n = kinds.count("delta")
    assert n > 1 and kinds == ["delta"] * n + ["citations", "usage", "done"]
    text = "".join(json.loads(d)["text"] for k, d in events if k == "delta")
    citations = json.loads(events[n][1])["citations"]
    assert citations[0]["source_id"] == "shipping"
    usage = json.loads(events[n + 1][1])
    assert usage["completion_tokens"] > 0 and set(usage["latency"]) == {"retrieval_ms", "ttft_ms", "total_ms"}
    assert json.loads(events[-1][1])["session_id"] == sid
    stored = chat.get(f"/v1/chat/sessions/{sid}").json()["messages"]
    assert stored[-1]["content"] == text


@pytest.mark.parametrize(
    "body",
    [
        {"content": ""},
        {"content": "x", "unknown": 1},
        {"content": "x", "top_k": 0},
        {"content": "x", "temperature": 5},
        {"content": "x", "max_tokens": 0},
        {"content": "x", "filter": {"team": {"like": "h%"}}},
        {},
    ],
)
def test_bad_messages_are_422(chat: TestClient, body: dict) -> None:
    sid = _session(chat)
    r = chat.post(f"/v1/chat/sessions/{sid}/messages", json=body)
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_bad_sessions(chat: TestClient) -> None:
    r = chat.post("/v1/chat/sessions", json={"collection": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert chat.post("/v1/chat/sessions", json={"collection": "no spaces"}).status_code == 422
    assert chat.post("/v1/chat/sessions", json={}).status_code == 422
    assert chat.get("/v1/chat/sessions/doesnotexist").status_code == 404


def test_full_queue_is_429_with_retry_after(chat: TestClient, fake: FakeGenerator) -> None:
    sid = _session(chat)
    fake.max_running = 0
    for stream in (False, True):
        r = chat.post(
            f"/v1/chat/sessions/{sid}/messages", json={"content": "When do orders ship?", "stream": stream}
        )
        assert r.status_code == 429 and r.headers["retry-after"] == "2", r.text
    assert chat.get(f"/v1/chat/sessions/{sid}").json()["messages"] == []


def test_generator_failure_midway(chat: TestClient, fake: FakeGenerator) -> None:
    sid = _session(chat)
    fake.fail_after = 2
    r = chat.post(f"/v1/chat/sessions/{sid}/messages", json={"content": "When do orders ship?"})
    assert r.status_code == 502 and "fake failure" in r.json()["detail"]
    r = chat.post(
        f"/v1/chat/sessions/{sid}/messages", json={"content": "When do orders ship?", "stream": True}
    )
    events = sse_events(r.text)
    assert [k for k, _ in events] == ["delta", "delta", "error"]
    assert chat.get(f"/v1/chat/sessions/{sid}").json()["messages"] == []  # nothing half-stored


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_generation(
    chat_app: tuple[FastAPI, TestClient], fake: FakeGenerator, stream: bool
) -> None:
    app, client = chat_app
    sid = _session(client)
    fake.delay_s = 0.05  # ~1 s for the whole answer
    path = f"/v1/chat/sessions/{sid}/messages"
    status, chunks = asyncio.run(
        call_then_disconnect(app, path, {"content": "When do orders ship?", "stream": stream}, stream)
    )
    assert fake.cancelled == 1 and fake.completed == 0 and fake.running == 0
    if stream:
        assert status == 200 and len(chunks) == 1 and chunks[0].startswith(b"event: delta")
    assert client.get(f"/v1/chat/sessions/{sid}").json()["messages"] == []


def test_window_cut_is_stored_and_later_turns_are_append_only_again(
    make_kb: Callable[..., KB], fake: FakeGenerator
) -> None:
    kb = make_kb(generator="fake", chat_max_prompt_tokens=300, chat_max_tokens=16)
    with fake_chat_app(kb, fake) as (_, client):
        sid = _session(client)
        questions = [
            "How long is the warranty on the Lumo desk lamp?",
            "How many days do I have to return the lamp?",
            "When do orders ship from the warehouse?",
            "When are salaries paid?",
            "What does the lamp warranty not cover?",
            "How fast are refunds paid back to the card?",
        ]
        usage = [_say(client, sid, q)["usage"] for q in questions]
        prompts = [r.messages for r in answer_requests(fake)]
        cut = next(i for i in range(1, len(prompts)) if prompts[i][: len(prompts[i - 1])] != prompts[i - 1])
        # the turn that cut the window lost reuse; the next one is append-only on the cut prompt again
        assert usage[cut]["cached_tokens"] < usage[cut - 1]["prompt_tokens"]
        assert cut + 1 < len(prompts) and prompts[cut + 1][: len(prompts[cut])] == prompts[cut]
        assert usage[cut + 1]["cached_tokens"] >= usage[cut]["prompt_tokens"]
        # old turns lost their passages (then, in this tiny window, the oldest turns went): the first
        # turn shown is an earlier question without sources; the current turn keeps its own
        first_user = prompts[cut][1]["content"]
        assert (
            first_user.startswith("Question: ") and first_user.removeprefix("Question: ") in questions[:cut]
        )
        assert "Sources:" in prompts[cut][-1]["content"]
        assert all(fake.count_tokens(p) + 16 <= 300 for p in prompts)
