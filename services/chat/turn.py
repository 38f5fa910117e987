"""One answer being produced: prepared prompt, running generation, and the events the routes relay.

Both the sessions API and the OpenAI-compatible endpoint use it. Events, in order:
`("delta", {"text"})`*, then `("citations", {...})`, `("usage", {...})`, `("done", {...})`; or
`("error", {"detail"})` if the generator fails midway. `aclose()` cancels the generation (client gone).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.chat.generators.base import Generation, GeneratorError, Usage
from services.chat.prompt import Message, Passage, Turn, Window
from services.observability.metrics import observe_generation


@dataclass(slots=True)
class PreparedTurn:
    messages: list[Message]
    turn: Turn  # the current turn as shown (its passages and references)
    cited: list[Passage]  # every passage given for this turn, shown or referenced, best first
    window: Window
    query: str
    rewrite: str
    retrieval_ms: float
    no_context: bool
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class TurnOutcome:
    answer: str
    finish_reason: str | None
    usage: Usage
    citations: list[dict[str, Any]]
    latency: dict[str, float | None]


class RunningTurn:
    def __init__(
        self,
        prepared: PreparedTurn,
        generation: Generation | None,
        fixed_answer: str,
        on_done: Callable[[PreparedTurn, TurnOutcome], Awaitable[dict[str, Any]]],
        on_release: Callable[[], None] = lambda: None,
    ) -> None:
        self.prepared = prepared
        self.generation = observe_generation(generation)  # TTFT, tokens/s to /metrics (issue 7)
        self.fixed_answer = fixed_answer
        self.on_done = on_done
        self.on_release = on_release
        self.outcome: TurnOutcome | None = None
        self.error: GeneratorError | None = None
        self._released = False

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.on_release()

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        p = self.prepared
        parts: list[str] = []
        ttft: float | None = None
        finish: str | None = "stop"
        usage = Usage()
        try:
            if self.generation is None:
                parts.append(self.fixed_answer)
                ttft = (time.perf_counter() - p.started) * 1000
                yield "delta", {"text": self.fixed_answer}
            else:
                try:
                    async for delta in self.generation:
                        if delta.text:
                            if ttft is None:
                                ttft = (time.perf_counter() - p.started) * 1000
                            parts.append(delta.text)
                            yield "delta", {"text": delta.text}
                        if delta.usage is not None:
                            finish, usage = delta.finish_reason, delta.usage
                except GeneratorError as exc:
                    self.error = exc
                    yield "error", {"detail": str(exc), "status": exc.status}
                    return
            answer = "".join(parts)
            citations = [c.citation(answer) for c in p.cited]
            latency = {
                "retrieval_ms": round(p.retrieval_ms, 2),
                "ttft_ms": None if ttft is None else round(ttft, 2),
                "total_ms": round((time.perf_counter() - p.started) * 1000, 2),
            }
            self.outcome = TurnOutcome(answer, finish, usage, citations, latency)
            extra = await self.on_done(p, self.outcome)
            yield "citations", {"citations": citations}
            yield "usage", {**usage.as_dict(), "latency": latency}
            yield "done", {"finish_reason": finish, "query": p.query, **extra}
        finally:
            if self.generation is not None:
                await self.generation.aclose()
            self._release()

    async def aclose(self) -> None:
        if self.generation is not None:
            await self.generation.aclose()
        self._release()

    async def collect(self) -> TurnOutcome:
        """Run to the end (non-streaming answers); raises the generator's error."""
        async for kind, data in self.events():
            if kind == "error":
                raise self.error or GeneratorError(data["detail"])
        assert self.outcome is not None
        return self.outcome
