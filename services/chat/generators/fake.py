"""A deterministic generator for fast tests: no model, but real streaming, cancellation, a queue limit
and a prefix cache that counts reuse the way the engine does (whole blocks of a token stream).

Its "tokens" are whitespace-separated pieces of the ChatML rendering of the messages, so an append-only
prompt (what the chat service promises) shows up as `cached_tokens` exactly like on the real engine.
"""

from __future__ import annotations

import asyncio
import re

from services.chat.generators.base import (
    AsyncGenGeneration,
    Delta,
    Generation,
    GenerationRequest,
    Generator,
    GeneratorBusy,
    GeneratorError,
    Message,
    Usage,
)
from services.chat.rewrite import REWRITE_SYSTEM

_TOKEN = re.compile(r"\s*\S+|\s+")


def render(messages: list[Message]) -> str:
    body = "".join(f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


class FakeGenerator(Generator):
    name = "fake"

    # Requests and streams kept for tests to inspect; unbounded, a long load test (bench/load.py) grew
    # the server by ~20 KB per chat request and slowed every prefix lookup (found in issue 7).
    KEEP = 256

    def __init__(
        self,
        reply: str | None = None,
        delay_s: float = 0.0,
        max_running: int = 1000,
        block_size: int = 4,
        fail_after: int | None = None,
        retry_after_s: float = 2.0,
    ) -> None:
        self.model = "fake"
        self.reply = reply
        self.delay_s = delay_s
        self.max_running = max_running
        self.block_size = block_size
        self.fail_after = fail_after
        self.retry_after_s = retry_after_s
        self.requests: list[GenerationRequest] = []
        self.running = 0
        self.cancelled = 0
        self.completed = 0
        self._streams: list[list[str]] = []

    def count_tokens(self, messages: list[Message]) -> int:
        return len(tokenize(render(messages)))

    def answer_for(self, request: GenerationRequest) -> str:
        if self.reply is not None:
            return self.reply
        if request.messages and request.messages[0]["content"] == REWRITE_SYSTEM:
            # a rewrite request: the last earlier question plus the follow-up, like a sensible model would
            lines = request.messages[-1]["content"].splitlines()
            users = [x.removeprefix("User: ") for x in lines if x.startswith("User: ")]
            return " ".join(users[-2:])
        question = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        last_line = question.strip().splitlines()[-1] if question.strip() else ""
        return f"According to [1], the answer to {last_line[:60]!r} is in the sources."

    def _cached(self, tokens: list[str]) -> int:
        best = 0
        for old in self._streams:
            n = 0
            for a, b in zip(old, tokens, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return min(best, len(tokens) - 1) // self.block_size * self.block_size

    async def start(self, request: GenerationRequest) -> Generation:
        if self.running >= self.max_running:
            raise GeneratorBusy("fake queue is full", self.retry_after_s)
        self.requests.append(request)
        del self.requests[: -self.KEEP]  # bounded: `KB_GENERATOR=fake` also serves load tests
        prompt = tokenize(render(request.messages))
        cached = self._cached(prompt)
        self.running += 1
        return AsyncGenGeneration(self._events(request, prompt, cached), self._abandoned)

    def _abandoned(self) -> None:
        self.running -= 1
        self.cancelled += 1

    async def _events(self, request: GenerationRequest, prompt: list[str], cached: int):  # noqa: ANN202
        pieces = tokenize(self.answer_for(request))[: request.max_tokens]
        done = False
        try:
            for i, piece in enumerate(pieces):
                if self.fail_after is not None and i >= self.fail_after:
                    raise GeneratorError("fake failure")
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield Delta(piece)
            done = True
            finish = "length" if len(pieces) == request.max_tokens else "stop"
            self._streams.append(tokenize(render(request.messages) + "".join(pieces)))
            del self._streams[: -self.KEEP]
            self.completed += 1
            yield Delta("", finish, Usage(len(prompt), cached, len(pieces)))
        finally:
            self.running -= 1
            if not done:
                self.cancelled += 1
