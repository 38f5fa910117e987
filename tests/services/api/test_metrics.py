"""/metrics on the real app: route-template latency, ingestion state, generation metrics, request ids."""

from __future__ import annotations

import io
import re
import time
import uuid
import zipfile
from collections.abc import Callable

import redis
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.auth import create_key
from services.chat.generators.fake import FakeGenerator
from services.core.container import KB
from tests.services.observability.scrape import value


def test_latency_is_labelled_by_route_template_not_path(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    route = "/v1/collections/{name}/search"
    name = "kb_http_request_duration_seconds_count"
    before = value(client.get("/metrics").text, name, method="POST", route=route, status="200")
    assert client.post("/v1/collections", json={"name": "m1"}).status_code == 201
    for _ in range(3):
        assert client.post("/v1/collections/m1/search", json={"query": "anything"}).status_code == 200
    assert client.get("/v1/no/such/route").status_code == 404
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = value(r.text, "kb_http_request_duration_seconds_count", method="POST", route=route, status="200")
    assert after - before == 3
    assert 'route="/v1/collections/m1/search"' not in r.text  # no series per raw path
    assert value(
        r.text, "kb_http_request_duration_seconds_count", method="GET", route="unmatched", status="404"
    )


def test_ingestion_counters_and_backlog_come_from_the_database(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    assert client.post("/v1/collections", json={"name": "dumps"}).status_code == 201
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.md", "# Pumps\nCheck the pressure weekly.")
        z.writestr("b.md", "# Valves\nGrease them monthly.")
        z.writestr("c.bin", b"\x00\x01\x02\xff" * 64)
    r = client.post(
        "/v1/collections/dumps/ingest-jobs", files={"file": ("d.zip", buf.getvalue(), "application/zip")}
    )
    job = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/ingest-jobs/{job}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    text = client.get("/metrics").text
    assert value(text, "kb_ingest_jobs", status="succeeded") == 1
    assert value(text, "kb_ingest_items", status="succeeded") == 2
    assert value(text, "kb_ingest_items", status="failed") == 1
    assert value(text, "kb_ingest_backlog_files") == 0
    assert value(text, "kb_documents", status="indexed") == 2
    assert "kb_gpu_memory" not in text  # no GPU here: no series, and no error


def test_generation_metrics_from_a_chat_turn(make_kb: Callable[..., KB]) -> None:
    kb = make_kb(generator="fake")
    kb.generator = FakeGenerator(reply="The lamp has a two year warranty [1].", delay_s=0.01)
    with TestClient(create_app(kb=kb)) as client:
        before = client.get("/metrics").text
        body = {"model": "fake", "messages": [{"role": "user", "content": "How long is the warranty?"}]}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        after = client.get("/metrics").text
    for name in ("kb_generation_ttft_seconds_count", "kb_generation_tokens_per_second_count"):
        assert value(after, name) - value(before, name) == 1, name
    completion = value(after, "kb_generation_tokens_total", kind="completion")
    assert completion - value(before, "kb_generation_tokens_total", kind="completion") > 3
    assert (
        value(after, "kb_generations_total", outcome="stop")
        - value(before, "kb_generations_total", outcome="stop")
        == 1
    )


def test_metrics_can_require_an_admin_key(make_kb: Callable[..., KB]) -> None:
    kb = make_kb(auth="required", metrics_auth=True)
    admin, _ = create_key(kb.db, None, [], admin=True)
    with TestClient(create_app(kb=kb)) as client:
        client.post("/v1/collections", json={"name": "c"}, headers={"x-api-key": admin})
        reader, _ = create_key(kb.db, "c", ["search"])
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"x-api-key": reader}).status_code == 403
        assert client.get("/metrics", headers={"x-api-key": admin}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_request_id_is_echoed_or_generated(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert (
        client.get("/healthz", headers={"x-request-id": "trace-42.a"}).headers["x-request-id"] == "trace-42.a"
    )
    generated = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # an id that could forge log lines is replaced, not echoed
    r = client.get("/healthz", headers={"x-request-id": 'x" injected=1 ' + "a" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    # errors carry it too
    r = client.post("/v1/collections/nosuch/search", json={"query": "x"}, headers={"x-request-id": "err-1"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "err-1"


def test_celery_queue_backlog_is_read_from_redis(make_kb: Callable[..., KB]) -> None:
    """No worker runs on this test's prefix, so the job's batches wait in Redis and the scrape shows them."""
    prefix = f"kbtest:{uuid.uuid4().hex[:12]}:"
    kb = make_kb(ingest_runner="celery", redis_prefix=prefix, ingest_batch_files=1)
    try:
        with TestClient(create_app(kb=kb)) as client:
            assert client.post("/v1/collections", json={"name": "q"}).status_code == 201
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for i in range(3):
                    z.writestr(f"n{i}.md", f"# Note {i}\nText {i}.")
            files = {"file": ("q.zip", buf.getvalue(), "application/zip")}
            assert client.post("/v1/collections/q/ingest-jobs", files=files).status_code == 202
            text = client.get("/metrics").text
        assert value(text, "kb_ingest_queue_tasks") == 3  # one task per file (KB_INGEST_BATCH_FILES=1)
        assert value(text, "kb_ingest_backlog_files") == 3
        assert value(text, "kb_ingest_jobs", status="queued") == 1
    finally:
        r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for key in r.scan_iter(match=prefix + "*"):
            r.delete(key)
