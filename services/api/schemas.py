"""Request and response bodies of the REST API (they are the OpenAPI schema)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.core.names import NAME_PATTERN
from services.search.hybrid import SearchHit


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Letters, digits, '_', '.', '-'; at most 128.")
    description: str | None = Field(default=None, max_length=2000)
    embedder: str | None = Field(
        default=None, description="'minilm' (English, default) or 'e5-multilingual'."
    )


class CollectionOut(BaseModel):
    name: str
    description: str | None
    embedder: str
    dim: int
    documents: int
    chunks: int
    created_at: dt.datetime


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class TextDocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    source_id: str | None = Field(default=None, min_length=1, max_length=1024)
    title: str | None = Field(default=None, max_length=1000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentIngested(BaseModel):
    id: int
    source_id: str
    status: str
    content_sha256: str
    chunks: int
    duplicate: bool
    version: int
    replaced: bool


class DocumentOut(BaseModel):
    id: int
    source_id: str
    title: str | None
    mime_type: str
    content_sha256: str
    version: int
    status: str
    error: str | None
    size_bytes: int
    chunks: int
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    total: int
    offset: int
    limit: int


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(default=5, ge=1)
    mode: Literal["dense", "lexical", "hybrid"] = "hybrid"
    filter: dict[str, Any] | None = Field(
        default=None, description='Equality {"key": value} or membership {"key": {"in": [v1, v2]}}.'
    )


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float


class ErrorOut(BaseModel):
    detail: str
