"""Dumps with known contents, and the DB == FAISS == BM25 check used by the job tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from services.core.container import KB
from storage.indexes.dense import DenseIndex
from storage.indexes.lexical import LexicalIndex
from storage.models import Chunk, Collection, Document
from tests.services.api.docs import make_pdf

TOPICS = ["boiler", "crane", "scaffold", "permit", "helmet", "ladder", "cement", "drill", "valve", "fuse"]


@dataclass
class Dump:
    root: Path
    good: list[str]
    bad: list[str]


def make_dump(root: Path, n_good: int, with_bad: bool = True, pdf_every: int = 0) -> Dump:
    """`n_good` distinct small documents in sub-folders, plus three files that must fail."""
    root.mkdir(parents=True, exist_ok=True)
    good: list[str] = []
    for i in range(n_good):
        topic = TOPICS[i % len(TOPICS)]
        rel = f"team{i % 3}/{topic}-{i}." + ("pdf" if pdf_every and i % pdf_every == 0 else "md")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"The {topic} inspection number {i} happens every {i + 2} days at site {i * 7}."
        if rel.endswith(".pdf"):
            path.write_bytes(make_pdf([text]))
        else:
            path.write_text(f"# {topic.title()} {i}\n\n{text}\n")
        good.append(rel)
    bad: list[str] = []
    if with_bad:
        (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
        (root / "blob.txt").write_bytes(bytes(range(256)) * 20)
        (root / "empty.md").write_bytes(b"")
        bad = ["broken.pdf", "blob.txt", "empty.md"]
    return Dump(root, good, bad)


def wait_done(get, timeout: float = 120.0, poll: float = 0.2) -> dict:  # noqa: ANN001
    """Poll `get()` (a job dict) until the job ends."""
    deadline = time.monotonic() + timeout
    while True:
        job = get()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not finish in {timeout} s: {job}")
        time.sleep(poll)


def wait_until(predicate, timeout: float = 120.0, poll: float = 0.05) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s")
        time.sleep(poll)


def consistent_counts(kb: KB, name: str) -> tuple[int, int]:
    """(documents, chunks) after asserting that the index *files* on disk are at the DB's
    generation and hold exactly the DB's chunk ids (FAISS) and chunk count (BM25)."""
    with kb.db.session() as s:
        collection = s.scalar(select(Collection).where(Collection.name == name))
        assert collection is not None
        db_ids = set(s.scalars(select(Chunk.id).where(Chunk.collection_id == collection.id)))
        sources = list(s.scalars(select(Document.source_id).where(Document.collection_id == collection.id)))
        docs = len(sources)
        generation = collection.index_generation
        folder = kb.store.indexes.root / collection.uid
    assert len(sources) == len(set(sources)), "a document was stored twice"
    if generation == 0:
        assert not db_ids
        return docs, 0
    dense, dense_gen = DenseIndex.load(folder / "dense.faiss", collection.dim)
    lexical = LexicalIndex(folder / "lexical")
    assert dense_gen == generation == lexical.generation(), (dense_gen, lexical.generation(), generation)
    faiss_ids = dense.ids().tolist()
    assert len(faiss_ids) == len(set(faiss_ids)) == dense.ntotal
    assert set(faiss_ids) == db_ids
    assert lexical.num_docs == len(db_ids)
    return docs, len(db_ids)
