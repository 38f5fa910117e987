"""Chat sessions: history in the database, one turn at a time per session.

A turn = rewrite the question (rewrite.py) -> hybrid search with a relevance floor (context.py) ->
passages within the token budget -> append-only prompt within the window (prompt.py) -> generate
(generators/) -> store question, passages as given, answer, citations and usage. Nothing is stored for
a turn that was cancelled or failed, so the history always matches what the engine has cached.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from services.chat.context import count_text_with, min_score_for, retrieve, select_within_budget
from services.chat.generators.base import GenerationRequest, Generator
from services.chat.prompt import Passage, Turn, Window, build_messages, fit_window, given, system_message
from services.chat.rewrite import rewrite_query
from services.chat.schemas import MessageIn
from services.chat.turn import PreparedTurn, RunningTurn, TurnOutcome
from storage.chat_models import ChatMessage, ChatSession
from storage.models import Collection
from storage.store import Conflict, NotFound

log = logging.getLogger(__name__)


def turns_from_rows(rows: list[ChatMessage]) -> tuple[list[Turn], list[str | None], Window]:
    """Rebuild the turns exactly as they were shown, plus each turn's standalone query and the window."""
    turns: list[Turn] = []
    queries: list[str | None] = []
    window = Window()
    for row in rows:
        if row.role == "user":
            chunks = row.context_chunks or []
            shown = [Passage.from_dict(c) for c in chunks if c.get("shown", True)]
            refs = [int(c["n"]) for c in chunks if not c.get("shown", True)]
            turns.append(Turn(row.content, shown, refs))
            queries.append(row.query)
            window = Window.from_dict((row.usage or {}).get("window"))
        elif row.role == "assistant" and turns:
            turns[-1].answer = row.content
    if turns and turns[-1].answer is None:  # never stored so, but do not build on a half turn
        turns.pop()
        queries.pop()
    return turns, queries, window


class ChatService:
    def __init__(self, kb: Any, generator: Callable[[], Generator]) -> None:
        self.kb = kb
        self.settings = kb.settings
        self._generator = generator
        # one turn at a time per session; a lock lives as long as someone holds or waits for it
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @property
    def generator(self) -> Generator:
        return self._generator()

    # --- sessions (synchronous: FastAPI runs these in its thread pool) --------------------------
    def create_session(
        self, collection: str, system_prompt: str | None, metadata: dict[str, Any]
    ) -> ChatSession:
        with self.kb.db.session() as s:
            coll = self.kb.store.get_collection(s, collection)
            row = ChatSession(collection_id=coll.id, system_prompt=system_prompt, metadata_=metadata)
            s.add(row)
            s.flush()
            s.refresh(row)
            return row

    def _load(self, s: Any, session_id: str) -> tuple[ChatSession, Collection]:
        row = s.get(ChatSession, session_id)
        if row is None:
            raise NotFound(f"chat session '{session_id}' not found")
        return row, s.get(Collection, row.collection_id)

    def session_view(self, session_id: str) -> dict[str, Any]:
        with self.kb.db.session() as s:
            row, coll = self._load(s, session_id)
            messages = [
                {
                    "role": m.role,
                    "content": m.content,
                    "query": m.query,
                    "citations": m.citations or [],
                    "usage": {k: v for k, v in (m.usage or {}).items() if k != "window"},
                    "created_at": m.created_at,
                }
                for m in row.messages
            ]
            return {
                "id": row.id,
                "collection": coll.name,
                "system_prompt": row.system_prompt,
                "metadata": row.metadata_ or {},
                "created_at": row.created_at,
                "updated_at": row.updated_at,
                "messages": messages,
            }

    async def delete_session(self, session_id: str) -> bool:
        """Delete the history; ask the generator to drop the session's cached KV. True if it did."""

        def load_prompt() -> list[dict[str, str]]:
            with self.kb.db.session() as s:
                row, _ = self._load(s, session_id)
                turns, _, window = turns_from_rows(list(row.messages))
                system = system_message(row.system_prompt, self.settings.chat_system_prompt)
                return build_messages(system, turns, window)

        messages = await anyio.to_thread.run_sync(load_prompt)
        dropped = False
        if len(messages) > 1:
            try:
                dropped = await self.generator.forget(messages)
            except Exception:  # noqa: BLE001 - the history goes regardless
                log.exception("could not drop cached KV of session %s", session_id)

        def delete() -> None:
            with self.kb.db.session() as s:
                row, _ = self._load(s, session_id)
                s.delete(row)

        await anyio.to_thread.run_sync(delete)
        self._locks.pop(session_id, None)
        return dropped

    # --- turns ----------------------------------------------------------------------------------
    async def start_turn(self, session_id: str, body: MessageIn) -> RunningTurn:
        """Prepare and submit; raises NotFound, GeneratorBusy (429) etc. before anything streams."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        try:
            await asyncio.wait_for(lock.acquire(), self.settings.generator_timeout_s)
        except TimeoutError:
            raise Conflict(f"another turn of chat session '{session_id}' is still running") from None
        try:
            prepared, max_tokens = await self._prepare(session_id, body)
            generation = None
            if not prepared.no_context:
                generation = await self.generator.start(
                    GenerationRequest(prepared.messages, max_tokens=max_tokens, temperature=body.temperature)
                )
        except BaseException:
            lock.release()
            raise

        async def on_done(p: PreparedTurn, outcome: TurnOutcome) -> dict[str, Any]:
            await anyio.to_thread.run_sync(self._save, session_id, body.content, p, outcome)
            return {"session_id": session_id}

        return RunningTurn(prepared, generation, self.settings.chat_no_answer, on_done, lock.release)

    async def _prepare(self, session_id: str, body: MessageIn) -> tuple[PreparedTurn, int]:
        st = self.settings
        started = time.perf_counter()

        def load() -> tuple[str, str, str | None, list[Turn], list[str | None], Window]:
            with self.kb.db.session() as s:
                row, coll = self._load(s, session_id)
                turns, queries, window = turns_from_rows(list(row.messages))
                return coll.name, coll.embedder, row.system_prompt, turns, queries, window

        collection, embedder, session_prompt, history, queries, window = await anyio.to_thread.run_sync(load)
        generator = self.generator
        rewritten = await rewrite_query(
            body.content,
            [(t.question, q or t.question, t.answer) for t, q in zip(history, queries, strict=True)],
            generator,
            st.chat_rewrite,
            st.chat_rewrite_timeout_s,
        )
        top_k = body.top_k or st.chat_top_k
        retrieved = await anyio.to_thread.run_sync(
            lambda: retrieve(
                self.kb.searcher,
                collection,
                [rewritten.query, body.content],
                top_k,
                min_score_for(embedder, st.chat_min_score),
                body.filter,
            )
        )
        max_tokens = body.max_tokens or st.chat_max_tokens
        window_tokens = min(st.chat_max_prompt_tokens, generator.max_context or st.chat_max_prompt_tokens)
        system = system_message(session_prompt, st.chat_system_prompt)

        def build() -> tuple[list[Passage], tuple[list[dict[str, str]], Window, Turn]]:
            """Token counting (the engine's tokenizer) runs here, off the event loop."""
            budget = st.chat_context_tokens
            chosen = select_within_budget(retrieved.passages, budget, count_text_with(generator))
            fitted = fit_window(
                system,
                history,
                body.content,
                chosen,
                window,
                generator.count_tokens,
                window_tokens,
                max_tokens,
                st.chat_trim_to,
            )
            return given(fitted[2], chosen), fitted

        chosen, (messages, window, turn) = await anyio.to_thread.run_sync(build)
        prepared = PreparedTurn(
            messages=messages,
            turn=turn,
            cited=chosen,
            window=window,
            query=rewritten.query,
            rewrite=rewritten.method,
            retrieval_ms=retrieved.retrieval_ms,
            no_context=not chosen,
            started=started,
        )
        return prepared, max_tokens

    def _save(self, session_id: str, content: str, p: PreparedTurn, outcome: TurnOutcome) -> None:
        shown = {x.chunk_id for x in p.turn.passages}
        context = [{**x.to_dict(), "shown": True} for x in p.turn.passages]
        context += [{**x.to_dict(), "shown": False} for x in p.cited if x.chunk_id not in shown]
        with self.kb.db.session() as s:
            row, _ = self._load(s, session_id)
            ordinal = len(row.messages)
            s.add_all(
                [
                    ChatMessage(
                        session_id=session_id,
                        ordinal=ordinal,
                        role="user",
                        content=content,
                        query=p.query,
                        citations=[],
                        context_chunks=context,
                        usage={"window": p.window.to_dict(), "rewrite": p.rewrite},
                    ),
                    ChatMessage(
                        session_id=session_id,
                        ordinal=ordinal + 1,
                        role="assistant",
                        content=outcome.answer,
                        citations=outcome.citations,
                        context_chunks=[],
                        usage={**outcome.usage.as_dict(), "latency": outcome.latency},
                    ),
                ]
            )
            row.updated_at = dt.datetime.now(dt.UTC)
