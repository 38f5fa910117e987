"""Hybrid search with filters; every hit carries what a citation needs."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException

from services.api.auth import collection_access
from services.api.deps import KBDep
from services.api.schemas import ErrorOut, SearchRequest, SearchResponse

router = APIRouter(prefix="/v1/collections", tags=["search"])


@router.post(
    "/{name}/search",
    response_model=SearchResponse,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    dependencies=[Depends(collection_access("search"))],
)
def search(name: str, body: SearchRequest, kb: KBDep) -> SearchResponse:
    if body.top_k > kb.settings.max_top_k:
        raise HTTPException(422, f"top_k must be at most {kb.settings.max_top_k}")
    started = time.perf_counter()
    hits = kb.searcher.search(name, body.query, top_k=body.top_k, mode=body.mode, filter=body.filter)
    return SearchResponse(
        results=hits,
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )
