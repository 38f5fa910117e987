"""Keeps each collection's FAISS + BM25 pair in step with the database.

The rule: the DB commit comes first and bumps `Collection.index_generation`; the
index files are then updated and stamped with that generation. Whoever finds a
file whose stamp differs from the DB (a crash between the two steps, a commit by
another process, a deleted file) reloads it from disk or rebuilds it from the
chunk rows. So a deleted chunk can never come back from a stale index, and the
index files are always disposable.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.indexes.dense import DenseIndex, DenseParams, IndexFileError
from storage.indexes.lexical import LexicalIndex
from storage.indexes.rwlock import RWLock
from storage.models import Chunk, Collection

log = logging.getLogger(__name__)

_REBUILD_BATCH = 2048


@dataclass
class CollectionIndexes:
    """The in-memory pair for one collection, valid at `generation`."""

    generation: int
    dense: DenseIndex
    lexical: LexicalIndex
    rw: RWLock


@dataclass(frozen=True, slots=True)
class IndexDelta:
    """What one DB commit changed, to be mirrored into the indexes."""

    added_ids: np.ndarray
    added_vectors: np.ndarray
    added_texts: list[str]
    removed_ids: np.ndarray


class IndexManager:
    def __init__(self, root: Path, dense_params: DenseParams = DenseParams()) -> None:
        self.root = root
        self.dense_params = dense_params
        self._loaded: dict[str, CollectionIndexes] = {}
        self._guard = threading.Lock()
        self._thread_locks: dict[str, threading.RLock] = {}
        self._file_locks: dict[str, FileLock] = {}

    # -- paths and locks -----------------------------------------------------------------

    def _dir(self, collection: Collection) -> Path:
        return self.root / collection.uid

    def _dense_path(self, collection: Collection) -> Path:
        return self._dir(collection) / "dense.faiss"

    def _lexical_path(self, collection: Collection) -> Path:
        return self._dir(collection) / "lexical"

    @contextmanager
    def write_lock(self, collection: Collection) -> Iterator[None]:
        """Serialises index writers of one collection across threads *and* processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._guard:
            thread_lock = self._thread_locks.setdefault(collection.uid, threading.RLock())
            # One FileLock object per collection: it counts re-entries, whereas a second
            # object on the same file would block on our own flock.
            file_lock = self._file_locks.setdefault(
                collection.uid, FileLock(str(self.root / f"{collection.uid}.lock"), thread_local=False)
            )
        with thread_lock, file_lock:
            yield

    # -- reading -------------------------------------------------------------------------

    def current(self, session: Session, collection: Collection) -> CollectionIndexes:
        """The collection's indexes at the DB's generation, loading or rebuilding as needed."""
        loaded = self._loaded.get(collection.uid)
        if loaded is not None and loaded.generation == collection.index_generation:
            return loaded
        with self.write_lock(collection):
            # Re-read the generation under the lock: a writer may have just finished.
            session.refresh(collection, ["index_generation"])
            loaded = self._loaded.get(collection.uid)
            if loaded is not None and loaded.generation == collection.index_generation:
                return loaded
            loaded = self._load_from_disk(collection) or self.rebuild(session, collection)
            return loaded

    def _load_from_disk(self, collection: Collection) -> CollectionIndexes | None:
        try:
            dense, dense_gen = DenseIndex.load(
                self._dense_path(collection), collection.dim, self.dense_params
            )
            lexical = LexicalIndex(self._lexical_path(collection))
            lexical_gen = lexical.generation()
        except IndexFileError as exc:
            log.info("index files of collection %s unusable (%s); rebuilding", collection.name, exc)
            return None
        if dense_gen != collection.index_generation or lexical_gen != collection.index_generation:
            log.info(
                "index files of collection %s are stale (dense %d, lexical %d, db %d); rebuilding",
                collection.name,
                dense_gen,
                lexical_gen,
                collection.index_generation,
            )
            return None
        return self._install(collection, dense, lexical)

    def _install(self, collection: Collection, dense: DenseIndex, lexical: LexicalIndex) -> CollectionIndexes:
        previous = self._loaded.get(collection.uid)
        rw = previous.rw if previous else RWLock()
        indexes = CollectionIndexes(collection.index_generation, dense, lexical, rw)
        self._loaded[collection.uid] = indexes
        return indexes

    # -- writing -------------------------------------------------------------------------

    def rebuild(self, session: Session, collection: Collection) -> CollectionIndexes:
        """Recreate both indexes from chunk rows (no re-embedding). Caller holds write_lock."""
        dense = DenseIndex(collection.dim, self.dense_params)
        lexical = LexicalIndex.create_empty(self._lexical_path(collection))
        stmt = (
            select(Chunk.id, Chunk.embedding, Chunk.text)
            .where(Chunk.collection_id == collection.id)
            .order_by(Chunk.id)
            .execution_options(yield_per=_REBUILD_BATCH)
        )
        pending: list[tuple[int, str]] = []
        for batch in session.execute(stmt).partitions(_REBUILD_BATCH):
            ids = np.fromiter((row.id for row in batch), np.int64, len(batch))
            vectors = np.frombuffer(b"".join(row.embedding for row in batch), np.float32)
            dense.add(ids, vectors.reshape(len(batch), collection.dim))
            pending.extend((row.id, row.text) for row in batch)
        lexical.apply(pending, [], collection.index_generation)
        dense.save(self._dense_path(collection), collection.index_generation)
        log.info("rebuilt indexes of collection %s: %d chunks", collection.name, dense.ntotal)
        return self._install(collection, dense, lexical)

    def apply(self, session: Session, collection: Collection, delta: IndexDelta, generation: int) -> None:
        """Mirror one committed DB change. Caller holds write_lock and has committed the DB.

        `collection.index_generation` must already be `generation`; the in-memory pair
        must be at `generation - 1`, otherwise it is rebuilt from the DB, which
        already contains this change.
        """
        loaded = self._loaded.get(collection.uid)
        if loaded is None or loaded.generation != generation - 1:
            loaded = self._load_at(collection, generation - 1)
        if loaded is None:
            self.rebuild(session, collection)
            return
        with loaded.rw.write():
            loaded.dense.remove(delta.removed_ids)
            loaded.dense.add(delta.added_ids, delta.added_vectors)
            added = zip(delta.added_ids.tolist(), delta.added_texts, strict=True)
            loaded.lexical.apply(added, delta.removed_ids.tolist(), generation)
            loaded.dense.save(self._dense_path(collection), generation)
            loaded.generation = generation

    def _load_at(self, collection: Collection, generation: int) -> CollectionIndexes | None:
        try:
            dense, dense_gen = DenseIndex.load(
                self._dense_path(collection), collection.dim, self.dense_params
            )
            lexical = LexicalIndex(self._lexical_path(collection))
            if dense_gen != generation or lexical.generation() != generation:
                return None
        except IndexFileError:
            return None
        indexes = self._install(collection, dense, lexical)
        indexes.generation = generation
        return indexes

    def drop(self, collection: Collection) -> None:
        self._loaded.pop(collection.uid, None)
        shutil.rmtree(self._dir(collection), ignore_errors=True)
        (self.root / f"{collection.uid}.lock").unlink(missing_ok=True)

    def stats(self, collection: Collection) -> dict[str, int] | None:
        loaded = self._loaded.get(collection.uid)
        if loaded is None:
            return None
        return {
            "generation": loaded.generation,
            "dense": loaded.dense.ntotal,
            "lexical": loaded.lexical.num_docs,
        }
