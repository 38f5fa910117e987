"""BM25 index of one collection on tantivy, keyed by chunk id.

Why tantivy rather than a static BM25 matrix (bm25s): kb adds and deletes
documents one at a time. bm25s must re-index the whole collection on every
change (2.5 s at 100k chunks, measured), tantivy commits a change in ~10 ms,
deletes by key, merges segments in the background and commits atomically
(segment files first, then an atomic swap of meta.json). Text is tokenised by
`storage.indexes.tokenize` (English stemming, CJK bigrams) and handed to
tantivy pre-split, so one tokeniser serves both languages and both sides.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tantivy

from storage.files import atomic_write_bytes
from storage.indexes.dense import IndexFileError
from storage.indexes.tokenize import tokenize

_GENERATION_FILE = "kb_generation.json"
_WRITER_HEAP = 64 * 1024 * 1024


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("chunk_id", stored=True, indexed=True, fast=True)
    builder.add_text_field("body", stored=False, tokenizer_name="whitespace", index_option="freq")
    return builder.build()


class LexicalIndex:
    """A tantivy directory plus the generation it reflects, written after each commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._schema = _schema()
        path.mkdir(parents=True, exist_ok=True)
        try:
            self._index = tantivy.Index(self._schema, path=str(path), reuse=True)
        except Exception as exc:  # tantivy raises ValueError/OSError subclasses inconsistently
            raise IndexFileError(f"cannot open lexical index {path}: {exc}") from exc

    @classmethod
    def create_empty(cls, path: Path) -> LexicalIndex:
        shutil.rmtree(path, ignore_errors=True)
        return cls(path)

    def generation(self) -> int:
        try:
            return int(json.loads((self.path / _GENERATION_FILE).read_text())["generation"])
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(f"{self.path} has no valid generation marker") from exc

    def apply(
        self,
        added: Iterable[tuple[int, str]],
        removed_ids: Iterable[int],
        generation: int,
    ) -> None:
        """Delete, add and commit in one writer session; then record the generation.

        The writer is opened per commit, not held: its lock file would block the
        CLI or a worker from writing while `kb serve` runs.
        """
        writer = self._index.writer(heap_size=_WRITER_HEAP, num_threads=1)
        try:
            for chunk_id in removed_ids:
                writer.delete_documents_by_term("chunk_id", int(chunk_id))
            for chunk_id, text in added:
                terms = " ".join(tokenize(text))
                writer.add_document(tantivy.Document(chunk_id=int(chunk_id), body=terms))
            writer.commit()
            writer.wait_merging_threads()
        except BaseException:
            writer.rollback()
            raise
        atomic_write_bytes(self.path / _GENERATION_FILE, json.dumps({"generation": generation}).encode())
        self._index.reload()

    @property
    def num_docs(self) -> int:
        self._index.reload()
        return int(self._index.searcher().num_docs)

    def reload(self) -> None:
        self._index.reload()

    def search(
        self, query: str, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, BM25 scores), best first; an all-stop-word query finds nothing."""
        terms = sorted(set(tokenize(query)))
        if not terms or k <= 0 or (allowed_ids is not None and len(allowed_ids) == 0):
            return np.empty(0, np.int64), np.empty(0, np.float32)
        should = [
            (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "body", term)) for term in terms
        ]
        query_obj = tantivy.Query.boolean_query(should)
        if allowed_ids is not None:
            id_filter = tantivy.Query.term_set_query(self._schema, "chunk_id", [int(i) for i in allowed_ids])
            query_obj = tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, query_obj), (tantivy.Occur.Must, id_filter)]
            )
        searcher = self._index.searcher()
        result = searcher.search(query_obj, k)
        ids = np.fromiter((searcher.doc(addr)["chunk_id"][0] for _, addr in result.hits), np.int64)
        scores = np.fromiter((score for score, _ in result.hits), np.float32)
        return ids, scores
