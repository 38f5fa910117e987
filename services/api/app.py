"""The FastAPI application: wiring, start-up checks, and nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from services.api.errors import install_error_handlers
from services.api.limits import BodySizeLimit
from services.api.openapi_doc import document_errors
from services.api.routes import chat as chat_routes
from services.api.routes import collections, documents, health, search
from services.api.routes import ingest_jobs as ingest_jobs_routes
from services.api.routes import openai_compat as openai_routes
from services.api.routes import web as web_routes
from services.api.security import install_security
from services.api.unavailable import install_unavailable_handlers
from services.chat.http import install_chat_error_handlers
from services.core.config import Settings, get_settings
from services.core.container import KB, build_kb

log = logging.getLogger("kb.api")


def create_app(settings: Settings | None = None, kb: KB | None = None) -> FastAPI:
    settings = settings or (kb.settings if kb else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = kb is None
        app.state.kb = kb or await run_in_threadpool(build_kb, settings)
        counts = await run_in_threadpool(app.state.kb.sync_indexes)
        log.info("kb ready: %d collections, %d chunks indexed", len(counts), sum(counts.values()))
        from services.jobs.service import JobService  # batch ingestion (issue 5)

        app.state.jobs = JobService(app.state.kb)
        if settings.ingest_runner == "inprocess":  # its queue was in memory: pick up unfinished jobs
            await run_in_threadpool(app.state.jobs.resume)
        if owned and settings.generator_preload:  # chat (issue 4): load the model before serving
            await run_in_threadpool(app.state.kb.chat_generator)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.jobs.close)
            if owned:
                app.state.kb.close()

    app = FastAPI(
        title="kb",
        version="0.1.0",
        summary="Self-hosted knowledge search and chat over your own documents.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_unavailable_handlers(app)  # PostgreSQL/Redis down: 503, not 500 (issue 7)
    document_errors(app)  # /openapi.json shows the 422/503 bodies kb really sends (issue 7)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    install_security(app, settings)  # keys, rate limit, timeout, request ids, /metrics (issue 7)
    for module in (health, collections, documents, search):
        app.include_router(module.router)
    app.include_router(ingest_jobs_routes.router)
    install_chat_error_handlers(app)
    app.include_router(chat_routes.router)
    app.include_router(openai_routes.router)
    web_routes.install(app)  # the web UI at / (issue 8)
    return app
