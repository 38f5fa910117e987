"""Hybrid search over one collection: dense (FAISS) + lexical (BM25), fused, then cited.

The embedder used for the query is always the collection's own (recorded at
creation), so vectors of different models are never compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ingest.embedders.base import Embedder
from ingest.pipeline import embedder_of
from services.search.filters import allowed_chunk_ids, normalize_filter
from services.search.fusion import FusionParams, fuse
from storage.store import KnowledgeStore

Mode = Literal["dense", "lexical", "hybrid"]


@dataclass(slots=True)
class SearchHit:
    chunk_id: int
    document_id: int
    source_id: str
    title: str | None
    text: str
    score: float
    page: int | None
    heading: list[str]
    start: int
    end: int
    metadata: dict[str, Any]


class Reranker(Protocol):
    """Optional second stage (e.g. a cross-encoder); none ships, see README."""

    def rerank(self, query: str, hits: list[SearchHit]) -> list[SearchHit]: ...


class HybridSearcher:
    def __init__(
        self,
        store: KnowledgeStore,
        embedder_for: Callable[[str], Embedder],
        fusion: FusionParams = FusionParams(),
        candidates: int = 50,
        reranker: Reranker | None = None,
    ) -> None:
        self.store = store
        self.embedder_for = embedder_for
        self.fusion = fusion
        self.candidates = candidates
        self.reranker = reranker

    def _hydrate(self, session, ranked: list[tuple[int, float]], limit: int) -> list[SearchHit]:  # noqa: ANN001
        """Rows for the best `limit` hits. Fetched in small batches: rows are only needed for
        what is returned, and an id whose row is gone (deleted since the index was read) is
        skipped, never shown."""
        hits: list[SearchHit] = []
        position = 0
        while len(hits) < limit and position < len(ranked):
            batch = ranked[position : position + limit - len(hits) + 2]
            position += len(batch)
            rows = self.store.chunks_with_documents(session, [chunk_id for chunk_id, _ in batch])
            for chunk_id, score in batch:
                if chunk_id not in rows or len(hits) == limit:
                    continue
                chunk, document = rows[chunk_id]
                hits.append(
                    SearchHit(
                        chunk_id=chunk.id,
                        document_id=document.id,
                        source_id=document.source_id,
                        title=document.title,
                        text=chunk.text,
                        score=float(score),
                        page=chunk.page,
                        heading=list(chunk.heading or []),
                        start=chunk.start,
                        end=chunk.end,
                        metadata=dict(document.metadata_ or {}),
                    )
                )
        return hits

    def search(
        self,
        collection_name: str,
        query: str,
        top_k: int = 5,
        mode: Mode = "hybrid",
        filter: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        conditions = normalize_filter(filter)
        with self.store.db.session() as s:
            collection = self.store.get_collection(s, collection_name)
            indexes = self.store.indexes.current(s, collection)
            allowed = allowed_chunk_ids(s, collection, conditions) if conditions else None
            # Over-fetch: a hit may vanish below if its row was deleted since the index was read.
            k = max(self.candidates, top_k * 2)
            empty = (np.empty(0, np.int64), np.empty(0, np.float32))
            dense = lexical = empty
            if mode in ("dense", "hybrid"):
                query_vector = embedder_of(collection, self.embedder_for).embed_query(query)
                with indexes.rw.read():
                    dense = indexes.dense.search(query_vector, k, allowed)
            if mode in ("lexical", "hybrid"):
                with indexes.rw.read():
                    lexical = indexes.lexical.search(query, k, allowed)
            if mode == "hybrid":
                ranked = fuse(dense, lexical, self.fusion)
            else:
                ids, scores = dense if mode == "dense" else lexical
                ranked = list(zip(ids.tolist(), scores.tolist(), strict=True))
            hits = self._hydrate(s, ranked, top_k if self.reranker is None else k)
        if self.reranker is not None:
            hits = self.reranker.rerank(query, hits)[:top_k]
        return hits
