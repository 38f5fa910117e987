"""OpenAI-compatible `/v1/chat/completions` and `/v1/models`; `kb:<collection>` turns retrieval on."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select

from services.api.auth import Principal, PrincipalDep, require
from services.api.deps import KBDep
from services.api.routes.chat import GeneratorDep
from services.chat.http import completion_response
from services.chat.openai_compat import (
    KB_PREFIX,
    ContextMemory,
    start_kb,
    start_plain,
)
from services.chat.schemas import ChatCompletionRequest
from storage.models import Collection

router = APIRouter(prefix="/v1", tags=["openai"])


def _memory(request: Request) -> ContextMemory:
    memory = getattr(request.app.state, "context_memory", None)
    if memory is None:
        memory = request.app.state.context_memory = ContextMemory()
    return memory


@router.get("/models")
def list_models(kb: KBDep, principal: PrincipalDep) -> dict[str, Any]:
    """The generator's own model plus one `kb:<collection>` model per collection the caller may see."""
    with kb.db.session() as s:
        names = [n for n in s.scalars(select(Collection.name).order_by(Collection.name)) if principal.sees(n)]
    created = int(time.time())
    own = kb.generator.model if kb.generator is not None else kb.settings.generator_model_name
    models = [own or kb.settings.generator] + [KB_PREFIX + n for n in names]
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": created, "owned_by": "kb"} for m in models],
    }


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    principal: Annotated[Principal, Depends(require("chat"))],
    body: ChatCompletionRequest,
    kb: KBDep,
    request: Request,
    generator: GeneratorDep,
) -> JSONResponse | StreamingResponse:
    kb_mode = body.model.startswith(KB_PREFIX)
    if kb_mode:
        principal.check_collection(body.model[len(KB_PREFIX) :])  # another collection's key: 404
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > kb.settings.max_tokens:
        raise HTTPException(422, f"max_tokens must be at most {kb.settings.max_tokens} (KB_MAX_TOKENS)")
    if kb_mode:
        running = await start_kb(body, kb, generator, _memory(request))
    else:
        running = await start_plain(body, generator, kb.settings.chat_max_tokens)
    return await completion_response(request, body, running, kb_mode)
