"""Chat sessions (issue 4): thin HTTP layer over services.chat.session_service.ChatService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from services.api.auth import Principal, require, session_access
from services.api.deps import KBDep
from services.api.schemas import ErrorOut
from services.chat.generators.base import Generator
from services.chat.http import sse, stream_turn, unless_disconnected
from services.chat.schemas import MessageIn, SessionCreate, SessionCreated, SessionOut, TurnOut
from services.chat.session_service import ChatService
from services.chat.turn import RunningTurn

router = APIRouter(prefix="/v1/chat", tags=["chat"])


def get_chat(request: Request, kb: KBDep) -> ChatService:
    """One ChatService per app: it holds the per-session locks."""
    chat = getattr(request.app.state, "chat", None)
    if chat is None or chat.kb is not kb:
        chat = request.app.state.chat = ChatService(kb, kb.chat_generator)
    return chat


ChatDep = Annotated[ChatService, Depends(get_chat)]


def ready_generator(kb: KBDep) -> Generator:
    """Sync on purpose: FastAPI runs it in a worker thread, so a first, lazy model load (seconds)
    never blocks the event loop. `kb serve` loads it at start-up anyway (KB_GENERATOR_PRELOAD)."""
    return kb.chat_generator()


GeneratorDep = Annotated[Generator, Depends(ready_generator)]
ERRORS = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.post("/sessions", status_code=201, response_model=SessionCreated, responses=ERRORS)
def create_session(
    body: SessionCreate, chat: ChatDep, principal: Annotated[Principal, Depends(require("chat"))]
) -> SessionCreated:
    principal.check_collection(body.collection)  # another collection's key: 404, as if missing
    row = chat.create_session(body.collection, body.system_prompt, body.metadata)
    return SessionCreated(id=row.id, collection=body.collection, created_at=row.created_at)


@router.get(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses={404: {"model": ErrorOut}},
    dependencies=[Depends(session_access())],
)
def get_session(session_id: str, chat: ChatDep) -> SessionOut:
    return SessionOut(**chat.session_view(session_id))


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    responses={404: {"model": ErrorOut}},
    dependencies=[Depends(session_access())],
)
async def delete_session(session_id: str, chat: ChatDep) -> Response:
    """Removes the history. `x-kv-dropped: true` when the generator also dropped the cached KV."""
    dropped = await chat.delete_session(session_id)
    return Response(status_code=204, headers={"x-kv-dropped": str(dropped).lower()})


async def _frames(running: RunningTurn) -> AsyncIterator[str]:
    async for kind, data in running.events():
        yield sse(kind, data)


@router.post(
    "/sessions/{session_id}/messages",
    response_model=TurnOut,
    responses={
        **ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with `stream: true`"},
        429: {"model": ErrorOut, "description": "generator queue full; see Retry-After"},
    },
    dependencies=[Depends(session_access())],
)
async def post_message(
    session_id: str, body: MessageIn, chat: ChatDep, request: Request, _: GeneratorDep
) -> TurnOut | StreamingResponse:
    """One turn. With `stream: true`: SSE events `delta`, `citations`, `usage`, `done` (or `error`)."""
    if body.top_k is not None and body.top_k > chat.settings.max_top_k:
        from fastapi import HTTPException

        raise HTTPException(422, f"top_k must be at most {chat.settings.max_top_k}")
    if body.max_tokens is not None and body.max_tokens > chat.settings.max_tokens:
        from fastapi import HTTPException

        raise HTTPException(422, f"max_tokens must be at most {chat.settings.max_tokens} (KB_MAX_TOKENS)")
    running = await chat.start_turn(session_id, body)
    if body.stream:
        return stream_turn(running, _frames(running))
    try:
        outcome = await unless_disconnected(request, running.collect())
    finally:
        await running.aclose()
    return TurnOut(
        message={"role": "assistant", "content": outcome.answer},
        citations=outcome.citations,
        usage=outcome.usage.as_dict(),
        latency=outcome.latency,
        query=running.prepared.query,
        finish_reason=outcome.finish_reason,
    )
