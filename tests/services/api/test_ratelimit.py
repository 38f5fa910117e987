"""Rate limits (memory and real Redis), request timeouts, and the top_k / max_tokens / settings limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.api.app import create_app
from services.api.auth import create_key
from services.api.ratelimit import RateLimiter
from services.api.timeouts import RequestTimeout
from services.chat.generators.fake import FakeGenerator
from services.core.config import Settings
from services.core.container import KB

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"kbtest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


def test_memory_limiter_counts_per_caller() -> None:
    async def run() -> list[float | None]:
        limiter = RateLimiter("3/minute")
        out = [await limiter.hit("a") for _ in range(4)]
        out.append(await limiter.hit("b"))
        return out

    got = asyncio.run(run())
    assert got[:3] == [None, None, None] and got[4] is None
    assert got[3] is not None and 1 <= got[3] <= 60


def test_redis_limiter_is_shared_between_replicas(redis_prefix: str) -> None:
    """Two API processes (two limiters) on one Redis share the count: the 4th hit is refused."""

    async def run() -> list[float | None]:
        opts = {"implementation": "redispy", "key_prefix": redis_prefix + "ratelimit"}
        a = RateLimiter("3/minute", "async+" + REDIS_URL, **opts)
        b = RateLimiter("3/minute", "async+" + REDIS_URL, **opts)
        return [await a.hit("key:1"), await b.hit("key:1"), await a.hit("key:1"), await b.hit("key:1")]

    got = asyncio.run(run())
    assert got[:3] == [None, None, None] and got[3] is not None
    assert list(redis.Redis.from_url(REDIS_URL).scan_iter(match=redis_prefix + "ratelimit*"))


def test_unreachable_redis_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter("1/minute", "async+redis://127.0.0.1:1/0", implementation="redispy")
    assert asyncio.run(limiter.hit("x")) is None
    assert "rate limit storage unavailable" in caplog.text


def test_http_429_per_client_without_auth(make_client: Callable[..., TestClient]) -> None:
    client = make_client(rate_limit="2/minute")
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
    assert client.get("/v1/collections").status_code == 200
    r = client.get("/v1/collections")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "2/minute" in r.json()["detail"] and "KB_RATE_LIMIT" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
    assert "kb_rate_limited_total" in client.get("/metrics").text


def test_http_429_per_key_on_redis(make_kb: Callable[..., KB], redis_prefix: str) -> None:
    kb = make_kb(
        auth="required", rate_limit="3/minute", rate_limit_storage="redis", redis_prefix=redis_prefix
    )
    one, _ = create_key(kb.db, None, [], admin=True)
    two, _ = create_key(kb.db, None, [], admin=True)
    with TestClient(create_app(kb=kb)) as client:
        codes = [client.get("/v1/collections", headers={"x-api-key": one}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert client.get("/v1/collections", headers={"x-api-key": two}).status_code == 200  # own bucket
    assert list(redis.Redis.from_url(REDIS_URL).scan_iter(match=redis_prefix + "ratelimit*"))


def test_rate_limit_defaults_and_bad_values() -> None:
    assert Settings().effective_rate_limit == ""  # embedded: no limit unless asked
    assert Settings(auth="required").effective_rate_limit == "120/minute"
    assert Settings(auth="required", rate_limit="off").effective_rate_limit == ""
    with pytest.raises(ValidationError, match="KB_RATE_LIMIT"):
        Settings(rate_limit="lots")
    assert RateLimiter.from_settings(Settings()) is None
    auto = RateLimiter.from_settings(Settings(rate_limit="5/second", ingest_runner="celery"))
    assert auto is not None and "Redis" in type(auto.storage).__name__


def test_max_top_k_and_max_tokens_are_422(make_kb: Callable[..., KB]) -> None:
    kb = make_kb(generator="fake", max_tokens=64, max_top_k=5)
    kb.generator = FakeGenerator(reply="ok")
    with TestClient(create_app(kb=kb)) as client:
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        r = client.post("/v1/collections/c/search", json={"query": "x", "top_k": 6})
        assert r.status_code == 422 and "at most 5" in r.json()["detail"]
        sid = client.post("/v1/chat/sessions", json={"collection": "c"}).json()["id"]
        r = client.post(f"/v1/chat/sessions/{sid}/messages", json={"content": "hi", "max_tokens": 65})
        assert r.status_code == 422 and "KB_MAX_TOKENS" in r.json()["detail"]
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        r = client.post("/v1/chat/completions", json={**body, "max_completion_tokens": 1000})
        assert r.status_code == 422 and "at most 64" in r.json()["detail"]
        assert client.post("/v1/chat/completions", json={**body, "max_tokens": 64}).status_code == 200


def _slow_app(seconds: float) -> tuple[FastAPI, dict[str, bool]]:
    seen = {"cancelled": False}
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise
        return {"status": "late"}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> Iterator[bytes]:  # type: ignore[misc]
            for i in range(4):
                yield f"{i}\n".encode()
                await asyncio.sleep(seconds)  # the whole stream outlasts the limit

        return StreamingResponse(body())

    app.add_middleware(RequestTimeout, seconds=seconds)
    return app, seen


def test_request_timeout_answers_504_and_cancels_but_spares_started_streams() -> None:
    app, seen = _slow_app(0.2)
    with TestClient(app) as client:
        r = client.get("/slow")
        assert r.status_code == 504 and "KB_REQUEST_TIMEOUT_S" in r.json()["detail"]
        assert seen["cancelled"]
        r = client.get("/stream")
        assert r.status_code == 200 and r.text == "0\n1\n2\n3\n"


def test_request_timeout_on_the_real_app(make_kb: Callable[..., KB]) -> None:
    """Non-streaming: 504 and the generation is cancelled. Streaming: started in time, so it completes.
    The answer takes 1.8 s against a 1 s limit: the request's work before the generator (the session in the
    database) must fit in the limit too, and on a loaded 2-core box it took more than the 0.3 s this test
    once gave (seen in a full run: the request never reached the generator)."""
    kb = make_kb(generator="fake", request_timeout_s=1.0)
    fake = kb.generator = FakeGenerator(reply=" ".join(["slow"] * 12), delay_s=0.15)
    with TestClient(create_app(kb=kb)) as client:
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 504 and r.headers["x-request-id"]
        assert len(fake.requests) == 1  # it reached the generator before the limit
        assert fake.cancelled == 1 and fake.completed == 0
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 200 and "slow" in streamed.text and "[DONE]" in streamed.text
        assert fake.completed == 1
