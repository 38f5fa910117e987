"""The store keeps DB, FAISS and BM25 in agreement, also across crashes and restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from ingest.types import ChunkDraft
from storage import migrate
from storage.db import Database
from storage.indexes.manager import IndexManager
from storage.models import Chunk
from storage.store import Conflict, KnowledgeStore, NewDocument, NotFound

DIM = 16


def _store(url: str, root: Path) -> KnowledgeStore:
    db = Database(url)
    migrate.upgrade(db)
    return KnowledgeStore(db, IndexManager(root))


def _doc(source_id: str, texts: list[str], seed: int) -> NewDocument:
    chunks, pos = [], 0
    for i, t in enumerate(texts):
        chunks.append(ChunkDraft(i, t, pos, pos + len(t), 1, ("H",), len(t.split()), t))
        pos += len(t) + 2
    vectors = np.random.default_rng(seed).standard_normal((len(texts), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return NewDocument(
        source_id, source_id, "text/plain", f"sha-{source_id}-{seed}", 10, "\n\n".join(texts), chunks, vectors
    )


def _state(store: KnowledgeStore, name: str) -> tuple[set[int], set[int], int]:
    with store.db.session() as s:
        collection = store.get_collection(s, name)
        idx = store.indexes.current(s, collection)
        db_ids = set(s.scalars(select(Chunk.id).where(Chunk.collection_id == collection.id)))
        return db_ids, set(idx.dense.ids().tolist()), idx.lexical.num_docs


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> KnowledgeStore:
    s = _store(database_url, tmp_path / "idx")
    s.create_collection("c", None, "test", "test:16", DIM)
    yield s
    s.db.dispose()


def test_lifecycle_keeps_db_and_indexes_equal(store: KnowledgeStore) -> None:
    [r1] = store.commit_documents("c", [_doc("a", ["alpha one", "alpha two"], 1)])
    [r2] = store.commit_documents("c", [_doc("b", ["bravo"], 2)])
    assert not r1.duplicate and r1.chunks == 2 and r2.chunks == 1
    db_ids, dense_ids, lexical_docs = _state(store, "c")
    assert db_ids == dense_ids and len(db_ids) == 3 == lexical_docs

    dup = _doc("other-name", ["whatever"], 9)
    dup.content_sha256 = "sha-a-1"
    [r3] = store.commit_documents("c", [dup])
    assert r3.duplicate and r3.document.id == r1.document.id

    [r4] = store.commit_documents("c", [_doc("a", ["alpha replaced"], 3)])
    assert r4.replaced and r4.document.version == 2
    db_ids, dense_ids, lexical_docs = _state(store, "c")
    assert db_ids == dense_ids and len(db_ids) == 2 == lexical_docs

    store.delete_document("c", r2.document.id)
    db_ids, dense_ids, lexical_docs = _state(store, "c")
    assert db_ids == dense_ids and len(db_ids) == 1 == lexical_docs
    with pytest.raises(NotFound):
        store.delete_document("c", r2.document.id)
    with pytest.raises(Conflict):
        store.create_collection("c", None, "test", "test:16", DIM)


def test_crash_between_db_commit_and_index_write_is_repaired(
    store: KnowledgeStore, database_url: str, tmp_path: Path
) -> None:
    store.commit_documents("c", [_doc("a", ["alpha"], 1)])

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("simulated crash after the DB commit")

    store.indexes.apply = crash  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        store.commit_documents("c", [_doc("b", ["bravo", "bravo two"], 2)])

    restarted = _store(database_url, tmp_path / "idx")
    db_ids, dense_ids, lexical_docs = _state(restarted, "c")
    assert len(db_ids) == 3 and db_ids == dense_ids and lexical_docs == 3
    restarted.db.dispose()


def test_corrupt_index_file_is_rebuilt_from_db(
    store: KnowledgeStore, database_url: str, tmp_path: Path
) -> None:
    store.commit_documents("c", [_doc("a", ["alpha", "beta", "gamma"], 1)])
    [faiss_file] = list((tmp_path / "idx").rglob("dense.faiss"))
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    restarted = _store(database_url, tmp_path / "idx")
    db_ids, dense_ids, lexical_docs = _state(restarted, "c")
    assert len(db_ids) == 3 and db_ids == dense_ids and lexical_docs == 3
    restarted.db.dispose()


def test_second_process_sees_first_process_commits(
    store: KnowledgeStore, database_url: str, tmp_path: Path
) -> None:
    other = _store(database_url, tmp_path / "idx")
    assert _state(other, "c")[1] == set()
    store.commit_documents("c", [_doc("a", ["alpha"], 1)])
    db_ids, dense_ids, lexical_docs = _state(other, "c")
    assert len(dense_ids) == 1 and db_ids == dense_ids and lexical_docs == 1
    other.commit_documents("c", [_doc("b", ["bravo"], 2)])
    db_ids, dense_ids, _ = _state(store, "c")
    assert len(dense_ids) == 2 and db_ids == dense_ids
    other.db.dispose()
