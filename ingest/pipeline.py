"""Bytes in, committed document out: parse -> chunk -> embed -> store.

Duplicates are detected by content hash *before* parsing and embedding, so a
re-uploaded dump costs one hash per file. Stage timings are kept so the
ingestion benchmark can show where the time goes.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ingest.chunker import chunk_document
from ingest.embedders.base import Embedder
from ingest.parsers import parse_document
from ingest.types import ParsedDocument, UnsupportedDocument
from storage.models import Collection
from storage.store import CommitResult, Conflict, KnowledgeStore, NewDocument


def embedder_of(collection: Collection, embedder_for: Callable[[str], Embedder]) -> Embedder:
    """The collection's own embedder, refusing a model whose files changed since the
    collection was built: its vectors would not be comparable with the stored ones."""
    embedder = embedder_for(collection.embedder)
    if embedder.fingerprint != collection.embedder_fingerprint:
        raise Conflict(
            f"collection '{collection.name}' was embedded with {collection.embedder_fingerprint}, "
            f"but the installed model is {embedder.fingerprint}; re-ingest into a new collection"
        )
    return embedder


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(slots=True)
class SourceFile:
    """One input: raw bytes plus what the caller knows about them."""

    data: bytes
    source_id: str
    filename: str | None = None
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class IngestOutcome:
    source_id: str
    result: CommitResult | None = None
    error: str | None = None


class StageTimer:
    """Wall seconds per stage, summed over calls (parse, chunk, embed, index, ...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


class IngestPipeline:
    def __init__(
        self,
        store: KnowledgeStore,
        embedder_for: Callable[[str], Embedder],
        chunk_tokens: int = 200,
        chunk_overlap: int = 32,
        embed_batch_size: int = 64,
    ) -> None:
        self.store = store
        self.embedder_for = embedder_for
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.embed_batch_size = embed_batch_size
        self.timer = StageTimer()

    def prepare(
        self,
        source: SourceFile,
        embedder: Embedder,
        parse: Callable[[bytes, str | None], ParsedDocument] = parse_document,
    ) -> NewDocument:
        """Parse, chunk and embed one file; raises UnsupportedDocument for bad input.

        `parse`: batch jobs pass ingest.sandbox's isolated parser (time limit, memory cap)."""
        with self.timer.stage("parse"):
            parsed = parse(source.data, source.filename)
        with self.timer.stage("chunk"):
            budget = min(self.chunk_tokens, embedder.max_tokens)
            chunks = chunk_document(
                parsed, embedder.count_tokens, budget, min(self.chunk_overlap, budget // 2)
            )
        if not chunks:
            raise UnsupportedDocument("no text found")
        with self.timer.stage("embed"):
            vectors = embedder.embed_passages(
                [c.embed_text for c in chunks], batch_size=self.embed_batch_size
            )
        metadata = {**parsed.metadata, **source.metadata}
        return NewDocument(
            source_id=source.source_id,
            title=source.title or parsed.title or source.filename,
            mime_type=parsed.mime_type,
            content_sha256=sha256_hex(source.data),
            size_bytes=len(source.data),
            text=parsed.text,
            chunks=chunks,
            embeddings=vectors,
            metadata=_json_safe(metadata),
        )

    def ingest(
        self, collection_name: str, sources: Iterable[SourceFile], commit_every: int = 16
    ) -> Iterator[IngestOutcome]:
        """Ingest many files, committing in batches; one bad file never stops the rest.

        Yields one outcome per input, in order, as soon as its batch is committed.
        """
        with self.store.db.session() as s:
            collection = self.store.get_collection(s, collection_name)
            s.expunge(collection)
        embedder = embedder_of(collection, self.embedder_for)
        pending: list[tuple[SourceFile, NewDocument]] = []
        for source in sources:
            with self.timer.stage("dedup"), self.store.db.session() as s:
                duplicate = self.store.find_duplicate(s, collection, sha256_hex(source.data))
                if duplicate is not None:
                    count = self.store.chunk_count(s, duplicate)
            if duplicate is not None:
                yield IngestOutcome(source.source_id, CommitResult(duplicate, True, False, count))
                continue
            try:
                pending.append((source, self.prepare(source, embedder)))
            except UnsupportedDocument as exc:
                yield IngestOutcome(source.source_id, error=str(exc))
                continue
            if len(pending) >= commit_every:
                yield from self._commit(collection_name, pending)
                pending = []
        if pending:
            yield from self._commit(collection_name, pending)

    def _commit(
        self, collection_name: str, pending: list[tuple[SourceFile, NewDocument]]
    ) -> list[IngestOutcome]:
        with self.timer.stage("index"):
            results = self.store.commit_documents(collection_name, [doc for _, doc in pending])
        return [
            IngestOutcome(src.source_id, result) for (src, _), result in zip(pending, results, strict=True)
        ]

    def ingest_one(self, collection_name: str, source: SourceFile) -> CommitResult:
        """Single upload: raises UnsupportedDocument instead of reporting it."""
        outcome = next(iter(self.ingest(collection_name, [source])))
        if outcome.error is not None:
            raise UnsupportedDocument(outcome.error)
        assert outcome.result is not None
        return outcome.result


def _json_safe(value: Any) -> Any:
    """Metadata goes into a JSON column; parsers may hand us dates or other objects."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
