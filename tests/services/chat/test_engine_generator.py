"""EngineGenerator's contract with the engine (a stub engine here; the real one is in
tests/services/api/test_chat_engine.py): errors map to HTTP-meaningful exceptions, cancel on close."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import pytest

from engine.llm_engine import QueueFull
from engine.sequence import Event
from services.chat.generators.base import (
    BadGenerationRequest,
    GenerationRequest,
    GeneratorBusy,
    GeneratorTimeout,
)
from services.chat.generators.engine_local import EngineGenerator

MSGS = [{"role": "user", "content": "hi"}]


class StubSeq:
    def __init__(self, events: list[Event]) -> None:
        self.id = 1
        self.events: queue.Queue[Event] = queue.Queue()
        for e in events:
            self.events.put(e)


class StubEngine:
    def __init__(self, events: list[Event] | None = None, error: Exception | None = None) -> None:
        self.events = events or []
        self.error = error
        self.cancelled: list[Any] = []
        self.submitted: list[tuple[Any, Any]] = []

    def submit(self, prompt: Any, params: Any) -> StubSeq:
        if self.error is not None:
            raise self.error
        self.submitted.append((prompt, params))
        return StubSeq(self.events)

    def cancel(self, seq: Any, wait: bool = True) -> None:
        self.cancelled.append(seq)


def test_stream_usage_and_params() -> None:
    usage = {"prompt_tokens": 7, "cached_tokens": 4, "completion_tokens": 2, "cached_from": {}}
    eng = StubEngine([Event("token", "Hel"), Event("token", "lo"), Event("finish", "", [], "stop", usage)])
    gen = EngineGenerator(eng, timeout_s=5)
    out = asyncio.run(
        gen.complete(GenerationRequest(MSGS, max_tokens=5, temperature=0.5, stop=["\n"], seed=3))
    )
    assert out.text == "Hello" and out.finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.cached_tokens, out.usage.completion_tokens) == (7, 4, 2)
    prompt, params = eng.submitted[0]
    assert prompt == MSGS and (params.max_tokens, params.temperature, params.stop, params.seed) == (
        5,
        0.5,
        ["\n"],
        3,
    )
    assert eng.cancelled == []  # finished normally: nothing to cancel


@pytest.mark.parametrize(
    ("error", "expected"),
    [(QueueFull("full"), GeneratorBusy), (ValueError("request needs 99 KV blocks"), BadGenerationRequest)],
)
def test_submit_errors(error: Exception, expected: type) -> None:
    gen = EngineGenerator(StubEngine(error=error), retry_after_s=3)
    with pytest.raises(expected) as info:
        asyncio.run(gen.start(GenerationRequest(MSGS)))
    if expected is GeneratorBusy:
        assert info.value.retry_after == 3


def test_bad_sampling_is_422_not_500() -> None:
    with pytest.raises(BadGenerationRequest):
        asyncio.run(EngineGenerator(StubEngine()).start(GenerationRequest(MSGS, top_p=0.0)))


def test_close_midway_and_unstarted_cancel_and_timeout() -> None:
    async def scenario() -> None:
        eng = StubEngine([Event("token", "a")])  # no finish: the engine would still be generating
        gen = EngineGenerator(eng, timeout_s=5)
        running = await gen.start(GenerationRequest(MSGS))
        assert (await running.__anext__()).text == "a"
        await running.aclose()
        assert len(eng.cancelled) == 1
        unstarted = await gen.start(GenerationRequest(MSGS))
        await unstarted.aclose()  # never iterated: still cancelled on the engine
        assert len(eng.cancelled) == 2
        slow = EngineGenerator(StubEngine([]), timeout_s=0.2)
        stream = await slow.start(GenerationRequest(MSGS))
        with pytest.raises(GeneratorTimeout):
            await stream.__anext__()
        assert len(slow.engine.cancelled) == 1

    asyncio.run(scenario())
