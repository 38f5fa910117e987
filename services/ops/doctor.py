"""`kb doctor`: does every collection's FAISS and BM25 agree with the database, and can it be fixed?

The database is the truth; FAISS and BM25 are derived from `Chunk.embedding` and `Chunk.text`. The
normal path keeps them in step (DB commit first, then the index files stamped with the new generation)
and any process that finds a stale stamp rebuilds, so a disagreement should never survive a restart.
The doctor checks that claim from outside, on the files themselves: the chunk ids in the DB, in the
FAISS file and in the tantivy directory, the generation stamps, and the DB states that a crash could
leave half-done (a document not in a final state, a job whose files are all done but that is not closed).

`repair` rebuilds both indexes of a disagreeing collection from the DB *and* bumps its generation in
the same step: a running `kb serve` or worker holds its own in-memory copy, and only a new generation
makes it reload the repaired files instead of trusting what it has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tantivy
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.core.container import KB
from storage.indexes.dense import DenseIndex, IndexFileError
from storage.indexes.lexical import LexicalIndex
from storage.job_models import IngestItem, IngestJob
from storage.models import Chunk, Collection, Document, utcnow

log = logging.getLogger(__name__)

FINAL_DOCUMENT_STATES = ("indexed", "failed")
OPEN_JOB_STATES = ("queued", "running")
_SAMPLE = 10  # ids listed per kind of disagreement; the counts are always complete


@dataclass
class IdDiff:
    """How one index's chunk ids differ from the DB's."""

    count: int = 0
    missing: int = 0  # in the DB, not in the index: a search would never find them
    extra: int = 0  # in the index, not in the DB: deleted or replaced chunks that could come back
    duplicates: int = 0
    sample_missing: list[int] = field(default_factory=list)
    sample_extra: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.duplicates == 0


@dataclass
class CollectionReport:
    name: str
    generation: int
    db_chunks: int
    faiss: IdDiff | None = None
    bm25: IdDiff | None = None
    faiss_generation: int | None = None
    bm25_generation: int | None = None
    problems: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Report:
    collections: list[CollectionReport]
    stuck_documents: list[dict[str, Any]]
    unclosed_jobs: list[str]
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.collections) and not self.stuck_documents and not self.unclosed_jobs

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for entry, collection in zip(out["collections"], self.collections, strict=True):
            entry["ok"] = collection.ok
        return out


def _diff(db_ids: np.ndarray, index_ids: np.ndarray) -> IdDiff:
    unique = np.unique(index_ids)
    missing = np.setdiff1d(db_ids, unique, assume_unique=True)
    extra = np.setdiff1d(unique, db_ids, assume_unique=True)
    return IdDiff(
        count=int(len(index_ids)),
        missing=int(len(missing)),
        extra=int(len(extra)),
        duplicates=int(len(index_ids) - len(unique)),
        sample_missing=[int(i) for i in missing[:_SAMPLE]],
        sample_extra=[int(i) for i in extra[:_SAMPLE]],
    )


def bm25_ids(lexical: LexicalIndex) -> np.ndarray:
    """Every chunk id stored in a tantivy directory (one entry per live document)."""
    lexical.reload()
    searcher = lexical._index.searcher()  # noqa: SLF001 - the doctor reads what search reads
    total = int(searcher.num_docs)
    if total == 0:
        return np.empty(0, np.int64)
    hits = searcher.search(tantivy.Query.all_query(), total).hits
    return np.fromiter((searcher.doc(addr)["chunk_id"][0] for _, addr in hits), np.int64, len(hits))


def check_collection(kb: KB, s: Session, collection: Collection) -> CollectionReport:
    """Compare one collection's DB rows with its index files. Caller holds the collection's write lock,
    so no writer (in any process) is between its DB commit and its index commit while we look."""
    s.refresh(collection, ["index_generation"])
    db_ids = np.asarray(
        s.scalars(select(Chunk.id).where(Chunk.collection_id == collection.id).order_by(Chunk.id)).all(),
        np.int64,
    )
    report = CollectionReport(collection.name, int(collection.index_generation), int(len(db_ids)))
    manager = kb.store.indexes
    try:
        dense, report.faiss_generation = DenseIndex.load(
            manager._dense_path(collection),  # noqa: SLF001
            collection.dim,
            manager.dense_params,
        )
        report.faiss = _diff(db_ids, dense.ids())
    except IndexFileError as exc:
        report.problems.append(f"FAISS file unusable: {exc}")
    lexical_path = manager._lexical_path(collection)  # noqa: SLF001
    if not lexical_path.exists():
        report.problems.append(f"BM25 index missing: {lexical_path}")
    else:
        try:
            lexical = LexicalIndex(lexical_path)
            report.bm25_generation = lexical.generation()
            report.bm25 = _diff(db_ids, bm25_ids(lexical))
        except IndexFileError as exc:
            report.problems.append(f"BM25 index unusable: {exc}")
    for kind, gen in (("FAISS", report.faiss_generation), ("BM25", report.bm25_generation)):
        if gen is not None and gen != report.generation:
            report.problems.append(f"{kind} file is at generation {gen}, the DB at {report.generation}")
    for kind, diff in (("FAISS", report.faiss), ("BM25", report.bm25)):
        if diff is not None and not diff.ok:
            report.problems.append(
                f"{kind} disagrees with the DB: {diff.missing} chunks missing, {diff.extra} extra, "
                f"{diff.duplicates} duplicated"
            )
    return report


def _stuck_documents(s: Session) -> list[dict[str, Any]]:
    rows = s.execute(
        select(Document.id, Collection.name, Document.source_id, Document.status)
        .join(Collection, Collection.id == Document.collection_id)
        .where(Document.status.not_in(FINAL_DOCUMENT_STATES))
        .order_by(Document.id)
    )
    return [{"id": i, "collection": c, "source_id": src, "status": st} for i, c, src, st in rows]


def _unclosed_jobs(s: Session) -> list[str]:
    """Open jobs with no pending file left: the process that committed the last batch died before it
    closed the job (`finish_if_done`), so the job would show `running` forever."""
    pending = (
        select(func.count())
        .select_from(IngestItem)
        .where(IngestItem.job_id == IngestJob.id, IngestItem.status == "pending")
        .scalar_subquery()
    )
    total = select(func.count()).select_from(IngestItem).where(IngestItem.job_id == IngestJob.id)
    stmt = select(IngestJob.id).where(
        IngestJob.status.in_(OPEN_JOB_STATES), pending == 0, total.scalar_subquery() > 0
    )
    return list(s.scalars(stmt.order_by(IngestJob.id)))


def _repair_collection(kb: KB, s: Session, collection: Collection) -> None:
    """Bump the generation in the DB, then rebuild both files from the DB at that generation."""
    s.execute(
        update(Collection)
        .where(Collection.id == collection.id)
        .values(index_generation=Collection.index_generation + 1)
    )
    s.commit()
    s.refresh(collection, ["index_generation"])
    kb.store.indexes.rebuild(s, collection)


def _repair_documents(kb: KB, s: Session, stuck: Iterable[dict[str, Any]]) -> None:
    """A document left in a non-final state never finished: mark it failed and drop its chunks, so it
    is neither searchable half-done nor mistaken for a duplicate when the file is sent again."""
    from sqlalchemy import delete

    for doc in stuck:
        s.execute(delete(Chunk).where(Chunk.document_id == doc["id"]))
        s.execute(
            update(Document)
            .where(Document.id == doc["id"])
            .values(status="failed", error="interrupted; marked failed by kb doctor", updated_at=utcnow())
        )
    s.commit()


def run_doctor(kb: KB, names: list[str] | None = None, repair: bool = False) -> Report:
    """Check every collection (or `names`); with `repair`, fix what disagrees and check again."""
    with kb.db.session() as s:
        stuck = _stuck_documents(s)
        unclosed = _unclosed_jobs(s)
        if names:
            stuck = [d for d in stuck if d["collection"] in names]
        if repair and stuck:
            _repair_documents(kb, s, stuck)
    if repair and unclosed:
        from services.jobs.batch import finish_if_done

        for job_id in unclosed:
            finish_if_done(kb, job_id)
    dirty = {d["collection"] for d in stuck} if repair else set()
    reports: list[CollectionReport] = []
    with kb.db.session() as s:
        stmt = select(Collection).order_by(Collection.name)
        if names:
            stmt = stmt.where(Collection.name.in_(names))
        for collection in s.scalars(stmt).all():
            with kb.store.indexes.write_lock(collection):
                report = check_collection(kb, s, collection)
                if repair and (not report.ok or collection.name in dirty):
                    log.warning("kb doctor: rebuilding %s (%s)", collection.name, "; ".join(report.problems))
                    _repair_collection(kb, s, collection)
                    report = check_collection(kb, s, collection)
                    report.repaired = True
            reports.append(report)
    if repair:
        with kb.db.session() as s:
            stuck, unclosed = _stuck_documents(s), _unclosed_jobs(s)
    return Report(reports, stuck, unclosed, repaired=repair)


def render(report: Report) -> list[str]:
    """Human lines for the terminal: one per collection, then the problems."""
    lines = []
    for c in report.collections:
        state = "ok" if c.ok else "DISAGREES"
        fixed = " (repaired)" if c.repaired else ""
        faiss = c.faiss.count if c.faiss else "-"
        bm25 = c.bm25.count if c.bm25 else "-"
        lines.append(
            f"{c.name}: {state}{fixed}; generation {c.generation}, "
            f"chunks db {c.db_chunks} / faiss {faiss} / bm25 {bm25}"
        )
        lines.extend(f"  - {p}" for p in c.problems)
    for d in report.stuck_documents:
        lines.append(f"document {d['id']} ({d['collection']}/{d['source_id']}) stuck in '{d['status']}'")
    for job_id in report.unclosed_jobs:
        lines.append(f"job {job_id} has no pending file but is still open")
    lines.append("all consistent" if report.ok else "inconsistent: run `kb doctor --repair`")
    return lines
