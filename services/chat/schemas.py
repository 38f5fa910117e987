"""Request and response bodies of the chat API and the OpenAI-compatible endpoint."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.core.names import NAME_PATTERN


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = Field(pattern=NAME_PATTERN)
    system_prompt: str | None = Field(default=None, max_length=8000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionCreated(BaseModel):
    id: str
    collection: str
    created_at: dt.datetime


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, max_length=8000)
    stream: bool = False
    top_k: int | None = Field(default=None, ge=1, le=50)
    filter: dict[str, Any] | None = Field(
        default=None, description='Equality {"key": value} or membership {"key": {"in": [v1, v2]}}.'
    )
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


class Citation(BaseModel):
    n: int
    chunk_id: int
    document_id: int
    source_id: str
    title: str | None
    page: int | None
    heading: list[str]
    snippet: str
    cited: bool = Field(description="The answer text contains [n].")


class ChatUsage(BaseModel):
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


class Latency(BaseModel):
    retrieval_ms: float
    ttft_ms: float | None
    total_ms: float


class ChatMessageOut(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class TurnOut(BaseModel):
    message: ChatMessageOut
    citations: list[Citation]
    usage: ChatUsage
    latency: Latency
    query: str = Field(description="The standalone query the retrieval used.")
    finish_reason: str | None


class HistoryMessage(BaseModel):
    role: str
    content: str
    query: str | None = None
    citations: list[Citation] = Field(default_factory=list)
    usage: dict[str, Any] = Field(default_factory=dict)
    created_at: dt.datetime


class SessionOut(BaseModel):
    id: str
    collection: str
    system_prompt: str | None
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    messages: list[HistoryMessage]


# --- OpenAI-compatible ---------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class OAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are ignored, as servers do

    model: str = Field(min_length=1)
    messages: list[OAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is supported.")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)
