"""OpenAI-compatible chat completions over the generator, with retrieval for `kb:<collection>` models.

Clients of this API are stateless: each request carries the whole conversation, without the passages kb
added to earlier turns. To keep the prompt append-only anyway (and the engine's prefix cache useful), the
passages given to each user turn are remembered in memory (`ContextMemory`, LRU), keyed by a hash of the
conversation up to that turn, and put back in the same place when the client sends that turn again.
After a restart, or for a turn the memory has forgotten, earlier turns are sent without their passages
(answers stay correct; only the reuse of that part is lost).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread

from services.chat.context import count_text_with, min_score_for, retrieve, select_within_budget
from services.chat.generators.base import BadGenerationRequest, GenerationRequest, Generator
from services.chat.prompt import Passage, Turn, Window, fit_window, given, system_message
from services.chat.rewrite import rewrite_query
from services.chat.schemas import ChatCompletionRequest
from services.chat.turn import PreparedTurn, RunningTurn, TurnOutcome

KB_PREFIX = "kb:"


class ContextMemory:
    """conversation-prefix hash -> the turn as it was shown (its passages and references)."""

    def __init__(self, max_items: int = 10_000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, Turn] = OrderedDict()

    def get(self, key: str) -> Turn | None:
        turn = self._items.get(key)
        if turn is not None:
            self._items.move_to_end(key)
        return turn

    def put(self, key: str, turn: Turn) -> None:
        self._items[key] = turn
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)


def _key(collection: str, system: str, convo: list[tuple[str, str]]) -> str:
    raw = json.dumps([collection, system, convo], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def split_messages(body: ChatCompletionRequest) -> tuple[str | None, list[tuple[str, str]]]:
    """(system text or None, [(role, text)] of user/assistant messages); 422 for what we cannot serve."""
    system_parts: list[str] = []
    convo: list[tuple[str, str]] = []
    for m in body.messages:
        if m.role in ("system", "developer"):
            system_parts.append(m.text())
        elif m.role in ("user", "assistant"):
            convo.append((m.role, m.text()))
        else:
            raise BadGenerationRequest(f"messages with role '{m.role}' are not supported")
    if not convo or convo[-1][0] != "user":
        raise BadGenerationRequest("the last message must come from the user")
    return ("\n\n".join(system_parts) if system_parts else None), convo


def sampling(body: ChatCompletionRequest, default_max: int) -> dict[str, Any]:
    return {
        "max_tokens": body.max_completion_tokens or body.max_tokens or default_max,
        "temperature": 0.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "seed": body.seed,
        "stop": body.stop_list(),
    }


async def start_plain(body: ChatCompletionRequest, generator: Generator, default_max: int) -> RunningTurn:
    """No retrieval: the client's messages go to the generator as they are."""
    system, convo = split_messages(body)
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": r, "content": t} for r, t in convo
    ]
    params = sampling(body, default_max)
    generation = await generator.start(GenerationRequest(messages, **params))
    prepared = PreparedTurn(messages, Turn(convo[-1][1]), [], Window(), convo[-1][1], "none", 0.0, False)

    async def on_done(_: PreparedTurn, __: TurnOutcome) -> dict[str, Any]:
        return {}

    return RunningTurn(prepared, generation, "", on_done)


async def start_kb(
    body: ChatCompletionRequest, kb: Any, generator: Generator, memory: ContextMemory
) -> RunningTurn:
    """Retrieval for the last user message of a `kb:<collection>` conversation."""
    st = kb.settings
    started = time.perf_counter()
    collection = body.model[len(KB_PREFIX) :]
    system_text, convo = split_messages(body)
    system = system_message(system_text, st.chat_system_prompt)

    def embedder_of_collection() -> str:
        with kb.db.session() as s:
            return kb.store.get_collection(s, collection).embedder  # NotFound -> 404

    embedder = await anyio.to_thread.run_sync(embedder_of_collection)
    history: list[Turn] = []
    for i, (role, text) in enumerate(convo[:-1]):
        if role == "user":
            remembered = memory.get(_key(collection, system["content"], convo[: i + 1]))
            history.append(
                Turn(text, list(remembered.passages), list(remembered.refs)) if remembered else Turn(text)
            )
        elif history:
            history[-1].answer = text if history[-1].answer is None else history[-1].answer + "\n\n" + text
    question = convo[-1][1]
    rewritten = await rewrite_query(
        question, [(t.question, t.question, t.answer) for t in history], generator, "heuristic"
    )
    retrieved = await anyio.to_thread.run_sync(
        lambda: retrieve(
            kb.searcher,
            collection,
            [rewritten.query, question],
            st.chat_top_k,
            min_score_for(embedder, st.chat_min_score),
        )
    )
    params = sampling(body, st.chat_max_tokens)
    window_tokens = min(st.chat_max_prompt_tokens, generator.max_context or st.chat_max_prompt_tokens)

    def build() -> tuple[list[Passage], list[dict[str, str]], Window, Turn]:
        """Token counting (the engine's tokenizer) runs here, off the event loop."""
        chosen = select_within_budget(retrieved.passages, st.chat_context_tokens, count_text_with(generator))
        messages, window, turn = fit_window(
            system,
            history,
            question,
            chosen,
            Window(),
            generator.count_tokens,
            window_tokens,
            params["max_tokens"],
            st.chat_trim_to,
        )
        return chosen, messages, window, turn

    chosen, messages, window, turn = await anyio.to_thread.run_sync(build)
    prepared = PreparedTurn(
        messages,
        turn,
        given(turn, chosen),
        window,
        rewritten.query,
        rewritten.method,
        retrieved.retrieval_ms,
        not chosen,
    )
    prepared.started = started
    generation = None if prepared.no_context else await generator.start(GenerationRequest(messages, **params))
    key = _key(collection, system["content"], convo)

    async def on_done(p: PreparedTurn, _: TurnOutcome) -> dict[str, Any]:
        memory.put(key, Turn(p.turn.question, p.turn.passages, p.turn.refs))
        return {}

    return RunningTurn(prepared, generation, st.chat_no_answer, on_done)


# --- response shapes ------------------------------------------------------------------------------


def usage_json(outcome_usage: Any) -> dict[str, Any]:
    u = outcome_usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def completion_json(model: str, outcome: TurnOutcome, kb_mode: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.answer},
                "finish_reason": outcome.finish_reason or "stop",
            }
        ],
        "usage": usage_json(outcome.usage),
    }
    if kb_mode:
        out["citations"] = outcome.citations
    return out


async def completion_chunks(
    running: RunningTurn, model: str, include_usage: bool, kb_mode: bool
) -> AsyncIterator[str]:
    """`data: {chunk}` frames as OpenAI streams them, then `data: [DONE]`."""
    from services.chat.http import sse

    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return sse(None, body)

    yield chunk({"role": "assistant", "content": ""})
    async for kind, data in running.events():
        if kind == "delta":
            yield chunk({"content": data["text"]})
        elif kind == "error":
            yield sse(None, {"error": {"message": data["detail"], "type": "generator_error"}})
            return
        elif kind == "done":
            outcome = running.outcome
            assert outcome is not None
            extra = {"citations": outcome.citations} if kb_mode else {}
            yield chunk({}, outcome.finish_reason or "stop", **extra)
            if include_usage:
                yield sse(
                    None,
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage_json(outcome.usage),
                    },
                )
    yield sse(None, "[DONE]")
