"""Chat on the real engine: the packaged SmolLM2 on CPU, real ingestion, retrieval and HTTP.

Kept lean (short answers, one model load per module): SmolLM2 on 2 CPU cores decodes ~15 tokens/s.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.chat.generators.engine_local import EngineGenerator
from services.chat.prompt import system_message
from services.core.config import Settings
from services.core.container import KB, build_kb
from tests.services.chat.fixtures import load_documents

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow
BLOCK = 16


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    from engine.config import EngineConfig, default_model
    from engine.llm_engine import Engine

    eng = Engine.from_config(EngineConfig(model=default_model(), device="cpu", num_kv_blocks=1024))
    yield eng
    eng.close()


def _with_engine(kb: KB, engine: object) -> KB:
    kb.generator = EngineGenerator(engine, "smollm2", timeout_s=120, owns_engine=False)
    return kb


@pytest.fixture
def served(engine: object, tmp_path: Path) -> Iterator[tuple[str, KB]]:
    """kb behind a real uvicorn server (the openai client and disconnects need real sockets)."""
    kb = _with_engine(build_kb(Settings(data_dir=tmp_path / "data", generator="engine")), engine)
    app = create_app(kb=kb)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    with TestClient(app, base_url=url) as c:  # same app object: ingest through it
        load_documents(c)
    yield url, kb
    server.should_exit = True
    thread.join(timeout=30)
    kb.close()


def _floor(n: int) -> int:
    return n // BLOCK * BLOCK


def test_three_turns_reuse_the_prefix_and_cite_the_right_pages(
    make_kb: Callable[..., KB], engine: object
) -> None:
    kb = _with_engine(make_kb(generator="engine"), engine)
    with TestClient(create_app(kb=kb)) as client:
        load_documents(client)
        sid = client.post("/v1/chat/sessions", json={"collection": "shop"}).json()["id"]
        questions = [
            "How long is the warranty on the Lumo desk lamp?",
            "How many days do I have to return it for a refund?",
            "From which warehouse do orders ship?",
        ]
        turns = []
        for q in questions:
            r = client.post(f"/v1/chat/sessions/{sid}/messages", json={"content": q, "max_tokens": 12})
            assert r.status_code == 200, r.text
            turns.append(r.json())
        for t in turns:
            assert t["message"]["content"].strip() and t["usage"]["completion_tokens"] >= 1
        t1, t2, t3 = turns
        # turn 2 is served from cache for all of turn 1's prompt and answer (whole blocks; the last
        # generated token has no KV yet), and turn 3 likewise for turn 2
        assert t1["usage"]["cached_tokens"] < t1["usage"]["prompt_tokens"]
        covered1 = _floor(t1["usage"]["prompt_tokens"] + t1["usage"]["completion_tokens"] - 1)
        assert t2["usage"]["cached_tokens"] >= covered1 > t1["usage"]["prompt_tokens"] - BLOCK
        covered2 = _floor(t2["usage"]["prompt_tokens"] + t2["usage"]["completion_tokens"] - 1)
        assert t3["usage"]["cached_tokens"] >= covered2
        # citations name the documents and pages the passages came from
        assert (t1["citations"][0]["source_id"], t1["citations"][0]["page"]) == ("lumo-manual", 1)
        assert any(c["source_id"] == "lumo-manual" and c["page"] == 2 for c in t2["citations"])
        assert t3["citations"][0]["source_id"] == "shipping"
        assert all(c["source_id"] != "payroll" for t in turns for c in t["citations"])
        history = client.get(f"/v1/chat/sessions/{sid}").json()["messages"]
        assert [m["content"] for m in history[1::2]] == [t["message"]["content"] for t in turns]
        # DELETE drops the session's KV too: the same first question in a new session is then
        # recomputed beyond the shared system prompt, where before it would be a full cache hit
        r = client.delete(f"/v1/chat/sessions/{sid}")
        assert r.status_code == 204 and r.headers["x-kv-dropped"] == "true"
        again = client.post(
            "/v1/chat/sessions/"
            + client.post("/v1/chat/sessions", json={"collection": "shop"}).json()["id"]
            + "/messages",
            json={"content": questions[0], "max_tokens": 1},
        ).json()
        assert again["usage"]["prompt_tokens"] == t1["usage"]["prompt_tokens"]  # the very same prompt
        system = system_message(None, kb.settings.chat_system_prompt)
        shared = len(engine.tokenizer.apply_chat_template([system], add_generation_prompt=False))
        assert again["usage"]["cached_tokens"] <= _floor(shared) < t1["usage"]["prompt_tokens"] - 4 * BLOCK


def test_openai_client_streaming_and_not(served: tuple[str, KB]) -> None:
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    assert "kb:shop" in [m.id for m in client.models.list().data]
    msgs = [{"role": "user", "content": "How long is the warranty on the Lumo desk lamp?"}]
    first = client.chat.completions.create(model="kb:shop", messages=msgs, max_tokens=10)
    answer = first.choices[0].message.content
    assert answer and first.usage.completion_tokens >= 1
    assert first.model_extra["citations"][0]["page"] == 1
    msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Does it cover falls?"}]
    stream = client.chat.completions.create(
        model="kb:shop", messages=msgs, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts).strip() and usage is not None
    # the stateless client got turn 1 back from the cache: kb restored turn 1's passages in place
    assert usage.prompt_tokens_details.cached_tokens >= _floor(
        first.usage.prompt_tokens + first.usage.completion_tokens - 1
    )


def test_disconnect_cancels_generation(served: tuple[str, KB], engine: object) -> None:
    url, kb = served
    sid = httpx.post(f"{url}/v1/chat/sessions", json={"collection": "shop"}).json()["id"]
    body = {"content": "Explain the Lumo lamp warranty in great detail.", "stream": True, "max_tokens": 400}
    with httpx.stream("POST", f"{url}/v1/chat/sessions/{sid}/messages", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("text"):
                break  # first delta received: hang up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and engine.stats()["running"] + engine.stats()["waiting"] > 0:
        time.sleep(0.1)
    stats = engine.stats()
    assert stats["running"] == 0 and stats["waiting"] == 0 and stats["referenced_blocks"] == 0
    assert httpx.get(f"{url}/v1/chat/sessions/{sid}").json()["messages"] == []  # nothing stored


def test_engine_server_serves_the_engine_to_a_remote_backend(engine: object) -> None:
    """`kb engine-serve`'s app over the real engine, read by the remote backend: reuse survives the hop."""
    import asyncio

    from services.chat.generators.base import GenerationRequest
    from services.chat.generators.openai_remote import OpenAIRemoteGenerator
    from services.engine_server.app import create_engine_app

    app = create_engine_app(EngineGenerator(engine, "smollm2", owns_engine=False))
    with TestClient(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine/v1")
        remote = OpenAIRemoteGenerator("http://engine/v1", "smollm2", client=http)
        msgs = [
            {"role": "system", "content": "You are a concise customer-service assistant."},
            {"role": "user", "content": "My parcel 4471 is late. What can I do about it?"},
        ]
        first = asyncio.run(remote.complete(GenerationRequest(msgs, max_tokens=8)))
        assert first.text and first.usage.completion_tokens >= 1
        msgs += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
        second = asyncio.run(remote.complete(GenerationRequest(msgs, max_tokens=4)))
        assert second.usage.cached_tokens >= _floor(
            first.usage.prompt_tokens + first.usage.completion_tokens - 1
        )
