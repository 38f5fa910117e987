"""HTTP glue shared by the chat routes and `kb engine-serve`: SSE framing, error mapping, disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from services.chat.generators.base import GeneratorBusy, GeneratorError
from services.chat.openai_compat import completion_chunks, completion_json
from services.chat.prompt import PromptTooLong
from services.chat.schemas import ChatCompletionRequest
from services.chat.turn import RunningTurn

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before a non-streaming answer was ready (logged as 499)."""


SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse(event: str | None, data: Any) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


def error_response(exc: GeneratorError) -> JSONResponse:
    headers = {}
    if isinstance(exc, GeneratorBusy):
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return JSONResponse(
        status_code=exc.status,
        content={"detail": str(exc), "error": {"message": str(exc), "type": type(exc).__name__}},
        headers=headers,
    )


def install_chat_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GeneratorError)
    async def _generator(_: Request, exc: GeneratorError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(PromptTooLong)
    async def _too_long(_: Request, exc: PromptTooLong) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": f"prompt too long: {exc}"})

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> JSONResponse:
        return JSONResponse(status_code=499, content={"detail": str(exc)})


async def unless_disconnected(request: Request, work: Awaitable[T], poll_s: float = 0.2) -> T:
    """Await `work`, cancelling it if the client goes away (a non-streaming answer nobody waits for)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.wait({task})  # let it unwind: its generation is cancelled on the way out
                raise ClientGone("client disconnected; generation cancelled")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


def stream_turn(running: RunningTurn, frames: AsyncIterator[str]) -> StreamingResponse:
    """SSE response whose end (normal, error or client disconnect) always closes the generation."""

    async def body() -> AsyncIterator[str]:
        try:
            async for frame in frames:
                yield frame
        finally:
            await running.aclose()

    # the background task covers a body that never started (client gone before the first byte)
    return StreamingResponse(
        body(), media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(running.aclose)
    )


async def completion_response(
    request: Request, body: ChatCompletionRequest, running: RunningTurn, kb_mode: bool
) -> JSONResponse | StreamingResponse:
    """An OpenAI chat completion for a started turn: SSE chunks, or one JSON body once it is done.

    Shared by the API's `/v1/chat/completions` and `kb engine-serve`, so both speak the same protocol."""
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_turn(running, completion_chunks(running, body.model, include_usage, kb_mode))
    try:
        outcome = await unless_disconnected(request, running.collect())
    finally:
        await running.aclose()
    return JSONResponse(completion_json(body.model, outcome, kb_mode))
