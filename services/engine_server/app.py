"""OpenAI-compatible `/v1/chat/completions` and `/v1/models` over one generator (our engine).

This is the process on the GPU box; the API box points `KB_GENERATOR=remote` and `KB_GENERATOR_URL` at
it. It serves plain chat only (retrieval stays with the API). Usage carries
`prompt_tokens_details.cached_tokens`, a full queue answers 429 with Retry-After, and a client that
disconnects cancels its generation (the engine frees its blocks at once).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.chat.generators.base import Generator
from services.chat.http import completion_response, install_chat_error_handlers
from services.chat.openai_compat import start_plain
from services.chat.schemas import ChatCompletionRequest
from services.observability.metrics import StateCollector, engine_of, install_metrics
from services.observability.middleware import RequestContext


def create_engine_app(
    generator: Generator | None = None,
    build: Callable[[], Generator] | None = None,
    default_max_tokens: int = 256,
) -> FastAPI:
    """Serve `generator`, or the one `build()` makes at start-up (loading a model takes seconds)."""
    if generator is None and build is None:
        raise ValueError("need a generator or a way to build one")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = generator is None
        app.state.generator = generator or await run_in_threadpool(build)  # type: ignore[arg-type]
        try:
            yield
        finally:
            if owned:
                await app.state.generator.aclose()

    app = FastAPI(title="kb engine", version="0.1.0", lifespan=lifespan)
    install_chat_error_handlers(app)
    # request ids, latency, and /metrics with the engine's KV blocks, batch and GPU memory (issue 7)
    app.add_middleware(RequestContext)
    install_metrics(app, StateCollector(engine=lambda: engine_of(getattr(app.state, "generator", None))))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse(status_code=422, content={"detail": f"invalid request: {msg}"})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models(request: Request) -> dict[str, Any]:
        gen: Generator = request.app.state.generator
        return {
            "object": "list",
            "data": [{"id": gen.model, "object": "model", "created": int(time.time()), "owned_by": "kb"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request
    ) -> JSONResponse | StreamingResponse:
        gen: Generator = request.app.state.generator
        running = await start_plain(body, gen, default_max_tokens)
        return await completion_response(request, body, running, kb_mode=False)

    return app
