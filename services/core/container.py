"""Builds kb's object graph from Settings, once per process (API, CLI, worker).

Keeping the wiring here means the routers and CLI commands only ever ask for
finished parts, and tests can build a graph against any database URL.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from ingest.embedders.factory import get_embedder
from ingest.pipeline import IngestPipeline
from services.core.config import Settings
from services.search.fusion import FusionParams
from services.search.hybrid import HybridSearcher
from storage import migrate
from storage.db import Database
from storage.indexes.dense import DenseParams
from storage.indexes.manager import IndexManager
from storage.models import Collection
from storage.store import KnowledgeStore

log = logging.getLogger(__name__)


@dataclass
class KB:
    settings: Settings
    db: Database
    store: KnowledgeStore
    pipeline: IngestPipeline
    searcher: HybridSearcher
    # The chat generator (issue 4), built on first use: most commands and tests never need a model.
    generator: Any = None
    _generator_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def chat_generator(self) -> Any:
        """The generator chosen by `KB_GENERATOR` (services.chat.generators.factory), built once."""
        if self.generator is None:
            with self._generator_lock:
                if self.generator is None:
                    from services.chat.generators.factory import build_generator

                    self.generator = build_generator(self.settings)
        return self.generator

    def close(self) -> None:
        engine = getattr(self.generator, "engine", None)
        if engine is not None and getattr(self.generator, "owns_engine", False):
            engine.close()  # in-process engine: stop its thread, persist its KV disk tier
        self.db.dispose()

    def sync_indexes(self) -> dict[str, int]:
        """Load every collection's indexes, rebuilding any that are missing or stale.

        Run at start so the first search is not the one that pays for a rebuild.
        Returns chunk counts per collection.
        """
        out: dict[str, int] = {}
        with self.db.session() as s:
            for collection in s.scalars(select(Collection).order_by(Collection.name)):
                indexes = self.store.indexes.current(s, collection)
                out[collection.name] = indexes.dense.ntotal
        return out

    def reindex(self, names: list[str] | None = None) -> dict[str, int]:
        """Rebuild indexes from the database unconditionally (`kb reindex`)."""
        out: dict[str, int] = {}
        with self.db.session() as s:
            stmt = select(Collection).order_by(Collection.name)
            if names:
                stmt = stmt.where(Collection.name.in_(names))
            for collection in s.scalars(stmt):
                with self.store.indexes.write_lock(collection):
                    out[collection.name] = self.store.indexes.rebuild(s, collection).dense.ntotal
        return out


def build_kb(settings: Settings, run_migrations: bool = True) -> KB:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    if run_migrations:
        migrate.upgrade(db)
    indexes = IndexManager(
        settings.index_dir,
        DenseParams(kind=settings.dense_index, hnsw_m=settings.hnsw_m, ef_search=settings.hnsw_ef_search),
    )
    store = KnowledgeStore(db, indexes)
    pipeline = IngestPipeline(
        store,
        get_embedder,
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
        embed_batch_size=settings.embed_batch_size,
    )
    fusion = FusionParams(
        method=settings.fusion,
        rrf_k=settings.rrf_k,
        dense_weight=settings.dense_weight,
        lexical_weight=settings.lexical_weight,
    )
    searcher = HybridSearcher(store, get_embedder, fusion, candidates=settings.candidates)
    return KB(settings=settings, db=db, store=store, pipeline=pipeline, searcher=searcher)
