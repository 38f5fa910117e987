"""One small async interface for every generator backend.

`Generator.start` submits a request and returns a running `Generation`: an async iterator of text
`Delta`s whose last item carries the finish reason and `Usage` (with `cached_tokens`, the prompt tokens
the backend served from its prefix cache). Submission is separate from iteration on purpose: a full queue
must surface as `GeneratorBusy` *before* an HTTP response has started, so the API can still answer 429.
`Generation.aclose()` cancels the request on the backend (a client that disconnects stops its tokens).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]


class GeneratorError(Exception):
    """The backend failed (HTTP 502)."""

    status = 502


class GeneratorBusy(GeneratorError):
    """The backend's queue is full; retry after `retry_after` seconds (HTTP 429)."""

    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GeneratorTimeout(GeneratorError):
    """No answer within the configured time (HTTP 504)."""

    status = 504


class BadGenerationRequest(GeneratorError):
    """The request cannot be served as given, e.g. a prompt larger than the KV pool (HTTP 422)."""

    status = 422


@dataclass(slots=True)
class GenerationRequest:
    messages: list[Message]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class Delta:
    """A piece of answer text; the last one has `finish_reason` and `usage` set (its text may be empty)."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None


class Generation(abc.ABC):
    """A running request. Iterate it for `Delta`s; `aclose()` cancels it (idempotent)."""

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Delta: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class AsyncGenGeneration(Generation):
    """Adapts an async generator object; closing it runs the backend's cancel path (the generator's
    `finally`). A generator that never started has no `finally` to run: `on_abandon` (synchronous, it
    may run in a cancelled scope) cancels the submitted request then."""

    def __init__(self, agen: Any, on_abandon: Callable[[], None] | None = None) -> None:
        self._agen = agen
        self._on_abandon = on_abandon
        self._started = False

    async def __anext__(self) -> Delta:
        self._started = True
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        if not self._started:
            self._started = True  # idempotent
            if self._on_abandon is not None:
                self._on_abandon()
        await self._agen.aclose()


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: str | None
    usage: Usage


class Generator(abc.ABC):
    """A chat model. Implementations: engine_local, openai_remote, fake."""

    name: str = "generator"
    model: str = "model"

    @abc.abstractmethod
    async def start(self, request: GenerationRequest) -> Generation:
        """Submit; raises `GeneratorBusy` / `BadGenerationRequest` before any token is produced."""

    async def complete(self, request: GenerationRequest) -> Completion:
        generation = await self.start(request)
        parts: list[str] = []
        finish, usage = None, Usage()
        try:
            async for delta in generation:
                parts.append(delta.text)
                if delta.usage is not None:
                    finish, usage = delta.finish_reason, delta.usage
        finally:
            await generation.aclose()
        return Completion("".join(parts), finish, usage)

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt size in the model's tokens (exact where the backend has the tokenizer)."""
        return approx_tokens(messages)

    @property
    def max_context(self) -> int | None:
        """The model's context window in tokens, when known."""
        return None

    async def forget(self, messages: list[Message]) -> bool:
        """Drop the cached KV of this token stream if the backend can; True when it did."""
        return False

    async def aclose(self) -> None:
        return None


def approx_tokens(messages: list[Message]) -> int:
    """~3.5 characters per token plus a few per message: used where no tokenizer is at hand."""
    return sum(4 + (len(m.get("content") or "") * 2 + 6) // 7 for m in messages) + 3
