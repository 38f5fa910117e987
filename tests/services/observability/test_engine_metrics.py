"""`kb engine-serve`'s /metrics with the real engine (packaged SmolLM2 on CPU): KV blocks, batch,
TTFT, tokens/s, and prefix-cache hits counted per tier from each generation's usage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.chat.generators.engine_local import EngineGenerator
from services.engine_server.app import create_engine_app
from tests.services.observability.scrape import value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    from engine.config import EngineConfig, default_model
    from engine.llm_engine import Engine

    eng = Engine.from_config(EngineConfig(model=default_model(), device="cpu", num_kv_blocks=256))
    yield eng
    eng.close()


def test_engine_server_metrics(engine: object) -> None:
    app = create_engine_app(EngineGenerator(engine, "smollm2", owns_engine=False))
    system = "You are a terse assistant. " * 12  # several full KV blocks, shared by both requests
    body = {
        "model": "smollm2",
        "max_tokens": 6,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Say hi."}],
    }
    with TestClient(app) as client:
        before = client.get("/metrics").text
        first = client.post("/v1/chat/completions", json=body)
        second = client.post("/v1/chat/completions", json=body, headers={"x-request-id": "eng-2"})
        after = client.get("/metrics").text
    assert first.status_code == second.status_code == 200 and second.headers["x-request-id"] == "eng-2"
    cached = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0  # the second request reused the first one's blocks

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("kb_generation_ttft_seconds_count") == 2
    assert delta("kb_generation_tokens_per_second_count") == 2
    assert delta("kb_engine_prompt_tokens_total", source="gpu") == cached  # resident blocks: GPU tier
    prompt = second.json()["usage"]["prompt_tokens"] + first.json()["usage"]["prompt_tokens"]
    sources = sum(
        delta("kb_engine_prompt_tokens_total", source=s) for s in ("gpu", "cpu", "disk", "computed")
    )
    assert sources == prompt
    assert value(after, "kb_engine_kv_blocks_total") == 256
    used = value(after, "kb_engine_kv_blocks", state="used")
    assert used + value(after, "kb_engine_kv_blocks", state="free") == 256
    assert value(after, "kb_engine_kv_blocks", state="cached") > 0
    assert value(after, "kb_engine_batch_size") == 0 and value(after, "kb_engine_waiting") == 0
