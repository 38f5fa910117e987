"""Collections and documents: every write goes DB first, then the indexes, under one lock.

This is the one place that knows a document's lifecycle (new, duplicate,
replaced, deleted), so the API, the CLI and batch workers cannot disagree on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import Database
from storage.indexes.manager import IndexDelta, IndexManager
from storage.models import Chunk, Collection, Document, utcnow


class NotFound(LookupError):
    """A named collection or document does not exist (API: 404)."""


class Conflict(Exception):
    """The request clashes with existing state, e.g. a taken collection name (API: 409)."""


class ChunkLike(Protocol):
    """What the store needs of a chunk (ingest.types.ChunkDraft has it; storage imports no ingest)."""

    ordinal: int
    text: str
    start: int
    end: int
    page: int | None
    heading_path: tuple[str, ...]
    token_count: int


@dataclass(slots=True)
class NewDocument:
    """A parsed, chunked and embedded document, ready to commit."""

    source_id: str
    title: str | None
    mime_type: str
    content_sha256: str
    size_bytes: int
    text: str
    chunks: Sequence[ChunkLike]
    embeddings: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CommitResult:
    document: Document
    duplicate: bool
    replaced: bool
    chunks: int


class KnowledgeStore:
    def __init__(self, db: Database, indexes: IndexManager) -> None:
        self.db = db
        self.indexes = indexes

    # -- collections -----------------------------------------------------------------------

    def create_collection(
        self, name: str, description: str | None, embedder: str, fingerprint: str, dim: int
    ) -> Collection:
        try:
            with self.db.session() as s:
                collection = Collection(
                    name=name,
                    description=description,
                    embedder=embedder,
                    embedder_fingerprint=fingerprint,
                    dim=dim,
                    index_generation=0,
                )
                s.add(collection)
                s.flush()
        except IntegrityError as exc:
            raise Conflict(f"collection '{name}' already exists") from exc
        return collection

    def get_collection(self, session: Session, name: str) -> Collection:
        collection = session.scalar(select(Collection).where(Collection.name == name))
        if collection is None:
            raise NotFound(f"collection '{name}' not found")
        return collection

    def list_collections(self, session: Session) -> list[Collection]:
        return list(session.scalars(select(Collection).order_by(Collection.name)))

    def counts(self, session: Session, collection: Collection) -> tuple[int, int]:
        documents = session.scalar(
            select(func.count())
            .select_from(Document)
            .where(Document.collection_id == collection.id, Document.status == "indexed")
        )
        chunks = session.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.collection_id == collection.id)
        )
        return int(documents or 0), int(chunks or 0)

    def delete_collection(self, name: str) -> None:
        with self.db.session() as s:
            collection = self.get_collection(s, name)
            with self.indexes.write_lock(collection):
                s.execute(delete(Chunk).where(Chunk.collection_id == collection.id))
                s.execute(delete(Document).where(Document.collection_id == collection.id))
                s.delete(collection)
                s.commit()
                self.indexes.drop(collection)

    # -- documents -------------------------------------------------------------------------

    def find_duplicate(self, session: Session, collection: Collection, sha256: str) -> Document | None:
        """An indexed document with this exact content: re-uploading it changes nothing."""
        return session.scalar(
            select(Document)
            .where(
                Document.collection_id == collection.id,
                Document.content_sha256 == sha256,
                Document.status == "indexed",
            )
            .limit(1)
        )

    def commit_documents(
        self,
        collection_name: str,
        documents: list[NewDocument],
        on_commit: Callable[[Session, list[CommitResult]], None] | None = None,
    ) -> list[CommitResult]:
        """Insert or replace documents with their chunks, then mirror into the indexes.

        One DB transaction and one index commit for the whole batch: batch ingestion
        calls this with many documents so the per-commit cost is paid once.
        `on_commit` runs inside the same transaction, before it commits: batch jobs
        record their per-file bookkeeping there, so it commits with the documents or
        not at all (exactly-once after a crash); raising from it rolls everything back.
        """
        with self.db.session() as s:
            collection = self.get_collection(s, collection_name)
            with self.indexes.write_lock(collection):
                self.indexes.current(s, collection)  # in memory == DB before we change it
                results, delta = self._write_documents(s, collection, documents)
                if on_commit is not None:
                    on_commit(s, results)
                if delta is None:
                    return results
                generation = self._bump_generation(s, collection)
                s.commit()
                self.indexes.apply(s, collection, delta, generation)
        return results

    @staticmethod
    def _bump_generation(s: Session, collection: Collection) -> int:
        """`+ 1` in SQL, not in Python: a writer that did not hold our locks (another machine)
        then gets the next generation after ours instead of the same one, so its index files
        can never be mistaken for reflecting both changes."""
        collection.index_generation = Collection.index_generation + 1
        s.flush()
        return collection.index_generation

    def _write_documents(
        self, s: Session, collection: Collection, documents: list[NewDocument]
    ) -> tuple[list[CommitResult], IndexDelta | None]:
        results: list[CommitResult] = []
        removed: list[int] = []
        added_ids: list[np.ndarray] = []
        added_vectors: list[np.ndarray] = []
        added_texts: list[str] = []
        for new in documents:
            duplicate = self.find_duplicate(s, collection, new.content_sha256)
            if duplicate is not None:
                results.append(CommitResult(duplicate, True, False, len(duplicate.chunks)))
                continue
            document = s.scalar(
                select(Document).where(
                    Document.collection_id == collection.id, Document.source_id == new.source_id
                )
            )
            replaced = document is not None
            if document is None:
                document = Document(collection_id=collection.id, source_id=new.source_id, version=1)
                s.add(document)
            else:
                old_ids = s.scalars(select(Chunk.id).where(Chunk.document_id == document.id)).all()
                removed.extend(old_ids)
                s.execute(delete(Chunk).where(Chunk.document_id == document.id))
                document.version += 1
            document.title = new.title
            document.mime_type = new.mime_type
            document.content_sha256 = new.content_sha256
            document.size_bytes = new.size_bytes
            document.text = new.text
            document.metadata_ = new.metadata
            document.status = "indexed"
            document.error = None
            document.updated_at = utcnow()
            s.flush()
            ids = self._insert_chunks(s, collection, document, new)
            s.expire(document, ["chunks"])
            added_ids.append(ids)
            added_vectors.append(new.embeddings)
            added_texts.extend(c.text for c in new.chunks)
            results.append(CommitResult(document, False, replaced, len(ids)))
        if not added_ids and not removed:
            return results, None
        delta = IndexDelta(
            added_ids=np.concatenate(added_ids) if added_ids else np.empty(0, np.int64),
            added_vectors=(
                np.concatenate(added_vectors) if added_vectors else np.empty((0, collection.dim), np.float32)
            ),
            added_texts=added_texts,
            removed_ids=np.asarray(removed, dtype=np.int64),
        )
        return results, delta

    @staticmethod
    def _insert_chunks(
        s: Session, collection: Collection, document: Document, new: NewDocument
    ) -> np.ndarray:
        if not new.chunks:
            return np.empty(0, np.int64)
        vectors = np.ascontiguousarray(new.embeddings, dtype=np.float32)
        if vectors.shape != (len(new.chunks), collection.dim):
            raise ValueError(f"expected {len(new.chunks)}x{collection.dim} embeddings, got {vectors.shape}")
        rows = [
            {
                "document_id": document.id,
                "collection_id": collection.id,
                "ordinal": c.ordinal,
                "text": c.text,
                "start": c.start,
                "end": c.end,
                "page": c.page,
                "heading": list(c.heading_path),
                "token_count": c.token_count,
                "embedding": vectors[i].tobytes(),
            }
            for i, c in enumerate(new.chunks)
        ]
        stmt = insert(Chunk).returning(Chunk.id, sort_by_parameter_order=True)
        return np.fromiter(s.scalars(stmt, rows), np.int64, len(rows))

    def list_documents(
        self, session: Session, collection: Collection, offset: int, limit: int
    ) -> tuple[list[Document], int]:
        where = Document.collection_id == collection.id
        total = session.scalar(select(func.count()).select_from(Document).where(where)) or 0
        items = session.scalars(
            select(Document).where(where).order_by(Document.id).offset(offset).limit(limit)
        )
        return list(items), int(total)

    def get_document(self, session: Session, collection: Collection, document_id: int) -> Document:
        document = session.get(Document, document_id)
        if document is None or document.collection_id != collection.id:
            raise NotFound(f"document {document_id} not found in collection '{collection.name}'")
        return document

    def chunk_count(self, session: Session, document: Document) -> int:
        return int(
            session.scalar(select(func.count()).select_from(Chunk).where(Chunk.document_id == document.id))
            or 0
        )

    def delete_document(self, collection_name: str, document_id: int) -> None:
        with self.db.session() as s:
            collection = self.get_collection(s, collection_name)
            with self.indexes.write_lock(collection):
                self.indexes.current(s, collection)
                document = self.get_document(s, collection, document_id)
                removed = np.asarray(
                    s.scalars(select(Chunk.id).where(Chunk.document_id == document.id)).all(), np.int64
                )
                s.execute(delete(Chunk).where(Chunk.document_id == document.id))
                s.delete(document)
                generation = self._bump_generation(s, collection)
                s.commit()
                delta = IndexDelta(
                    np.empty(0, np.int64), np.empty((0, collection.dim), np.float32), [], removed
                )
                self.indexes.apply(s, collection, delta, generation)

    # -- search support --------------------------------------------------------------------

    def chunks_with_documents(self, session: Session, ids: list[int]) -> dict[int, tuple[Chunk, Document]]:
        """Rows for index hits; ids no longer in the DB are simply absent (never resurrected)."""
        if not ids:
            return {}
        rows = session.execute(
            select(Chunk, Document).join(Document, Chunk.document_id == Document.id).where(Chunk.id.in_(ids))
        )
        return {chunk.id: (chunk, document) for chunk, document in rows}
