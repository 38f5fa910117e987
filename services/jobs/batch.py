"""The work of one batch of an ingest job, shared by the in-process runner and the Celery task.

Exactly-once rests on two rules. (1) An item leaves `pending` only through a
conditional UPDATE (`... WHERE status = 'pending'`), so a redelivered or
duplicated task can never count a file twice. (2) Items that produce documents
are marked inside the very transaction that commits those documents (the store's
`on_commit` hook): after a crash either both happened or neither did, and a
redelivery re-does exactly the files that are still pending. If a concurrent
task or a cancel got there first, the hook raises `Superseded`, the transaction
rolls back (DB and indexes untouched) and the batch retries with what is left.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from ingest.archives import ArchiveError, ArchiveLimits
from ingest.dump_reader import DumpReader
from ingest.pipeline import SourceFile, embedder_of, sha256_hex
from ingest.sandbox import isolated_parser
from ingest.types import UnsupportedDocument
from services.core.config import Settings
from services.core.container import KB
from storage.job_models import IngestItem, IngestJob
from storage.models import Collection, utcnow
from storage.store import CommitResult, Conflict, NewDocument

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")


class TransientError(Exception):
    """Worth retrying later: lock not obtained, broker or database briefly away."""


class Superseded(Exception):
    """Another task or a cancel changed an item of this batch first: roll back and re-check."""


TRANSIENT: tuple[type[BaseException], ...] = (TransientError, OperationalError, InterfaceError)

CommitLock = Callable[[str], AbstractContextManager[object]]


def no_lock(_uid: str) -> AbstractContextManager[object]:
    """One process: the IndexManager's thread and file locks already serialise commits."""
    return nullcontext()


def archive_limits(settings: Settings) -> ArchiveLimits:
    mb = 1024 * 1024
    return ArchiveLimits(
        max_files=settings.ingest_max_files,
        max_total_bytes=int(settings.ingest_max_total_mb * mb),
        max_file_bytes=int(settings.ingest_max_file_mb * mb),
        max_ratio=settings.ingest_max_ratio,
        max_depth=settings.ingest_max_depth,
    )


@dataclass(slots=True)
class Outcome:
    item_id: int
    status: str  # succeeded | duplicate | failed
    error: str | None = None
    document_id: int | None = None


def _write_outcomes(s: Session, outcomes: list[Outcome]) -> None:
    now = utcnow()
    for o in outcomes:
        done = s.execute(
            update(IngestItem)
            .where(IngestItem.id == o.item_id, IngestItem.status == "pending")
            .values(status=o.status, error=o.error, document_id=o.document_id, updated_at=now)
        )
        if done.rowcount != 1:
            raise Superseded(o.item_id)


def process_batch(kb: KB, job_id: str, item_ids: list[int], commit_lock: CommitLock = no_lock) -> None:
    """Run one batch to the end; raises only TRANSIENT errors (the caller retries)."""
    settings = kb.settings
    with kb.db.session() as s:
        job = s.get(IngestJob, job_id)
        if job is None or job.status in TERMINAL:
            return
        if job.status == "queued":
            s.execute(
                update(IngestJob)
                .where(IngestJob.id == job_id, IngestJob.status == "queued")
                .values(status="running", started_at=utcnow())
            )
        collection = s.get(Collection, job.collection_id)
        pending = list(
            s.scalars(
                select(IngestItem)
                .where(IngestItem.id.in_(item_ids), IngestItem.status == "pending")
                .order_by(IngestItem.id)
            )
        )
        items = [(i.id, i.path, i.attempts + 1) for i in pending]  # this delivery included
        if pending:
            s.execute(
                update(IngestItem)
                .where(IngestItem.id.in_([i.id for i in pending]))
                .values(attempts=IngestItem.attempts + 1)
                .execution_options(synchronize_session=False)
            )
        source, label = Path(job.source), str((job.options or {}).get("label") or Path(job.source).name)
        if collection is not None:
            s.expunge(collection)
    if not items:
        finish_if_done(kb, job_id)
        return
    if collection is None:
        fail_items(kb, [i for i, _, _ in items], "the collection was deleted")
        finish_if_done(kb, job_id)
        return

    early: list[Outcome] = []
    gave_up = f"gave up after {settings.ingest_max_attempts} deliveries (the worker died each time)"
    worn = [i for i, _, attempts in items if attempts > settings.ingest_max_attempts]
    early.extend(Outcome(i, "failed", gave_up) for i in worn)
    todo = {path: item_id for item_id, path, attempts in items if item_id not in worn}
    prepared: list[tuple[int, NewDocument]] = []
    try:
        embedder = embedder_of(collection, kb.pipeline.embedder_for)
    except Conflict as exc:
        early.extend(Outcome(i, "failed", str(exc)) for i in todo.values())
        todo = {}
    try:
        reader_paths = list(todo)
        reader = DumpReader(source, archive_limits(settings)) if reader_paths else None
    except ArchiveError as exc:
        early.extend(Outcome(i, "failed", f"cannot read the dump: {exc}") for i in todo.values())
        reader, reader_paths = None, []
    if reader is not None:
        with reader:
            for path, data in reader.read_many(reader_paths):
                item_id = todo[path]
                if isinstance(data, Exception):
                    early.append(Outcome(item_id, "failed", str(data)))
                    continue
                outcome, doc = _prepare(kb, collection, embedder, label, path, item_id, data)
                if doc is not None:
                    prepared.append((item_id, doc))
                elif outcome is not None:
                    early.append(outcome)
    _commit(kb, job_id, collection, early, prepared, commit_lock)
    finish_if_done(kb, job_id)


def _prepare(kb, collection, embedder, label, path, item_id, data):  # noqa: ANN001, ANN202
    if not data.strip():
        return Outcome(item_id, "failed", "the file is empty"), None
    with kb.db.session() as s:
        duplicate = kb.store.find_duplicate(s, collection, sha256_hex(data))
        if duplicate is not None:
            return Outcome(item_id, "duplicate", None, duplicate.id), None
    source = SourceFile(data, f"{label}/{path}", posixpath.basename(path.split("!/")[-1]))
    try:
        parse = isolated_parser(kb.settings.parse_timeout_s, kb.settings.parse_memory_mb)
        return None, kb.pipeline.prepare(source, embedder, parse=parse)
    except UnsupportedDocument as exc:
        return Outcome(item_id, "failed", f"unsupported or unreadable: {exc}"), None
    except TRANSIENT:
        raise
    except Exception as exc:  # a parser bug must not loop forever: recorded once, like a corrupt file
        log.exception("ingest job: %s failed", path)
        return Outcome(item_id, "failed", f"internal error: {type(exc).__name__}: {exc}"), None


def _commit(
    kb: KB,
    job_id: str,
    collection: Collection,
    early: list[Outcome],
    prepared: list[tuple[int, NewDocument]],
    commit_lock: CommitLock,
) -> None:
    for _ in range(5):
        try:
            if not prepared:
                with kb.db.session() as s:
                    _write_outcomes(s, early)
                return

            on_commit = _recorder(early, prepared)

            asked = time.perf_counter()
            with commit_lock(collection.uid):
                got = time.perf_counter()
                kb.store.commit_documents(collection.name, [d for _, d in prepared], on_commit=on_commit)
            log.info(
                "commit of %d documents into %s: %.3f s holding the lock, %.3f s waiting for it",
                len(prepared),
                collection.name,
                time.perf_counter() - got,
                got - asked,
            )
            return
        except Superseded:
            still = set(_pending_ids(kb, [o.item_id for o in early] + [i for i, _ in prepared]))
            early = [o for o in early if o.item_id in still]
            prepared = [(i, d) for i, d in prepared if i in still]
            if not early and not prepared:
                return
    raise TransientError(f"job {job_id}: items kept changing under the commit")


def _recorder(
    early: list[Outcome], prepared: list[tuple[int, NewDocument]]
) -> Callable[[Session, list[CommitResult]], None]:
    def on_commit(s: Session, results: list[CommitResult]) -> None:
        done = [
            Outcome(item_id, "duplicate" if r.duplicate else "succeeded", None, r.document.id)
            for (item_id, _), r in zip(prepared, results, strict=True)
        ]
        _write_outcomes(s, early + done)

    return on_commit


def _pending_ids(kb: KB, ids: list[int]) -> list[int]:
    with kb.db.session() as s:
        return list(
            s.scalars(select(IngestItem.id).where(IngestItem.id.in_(ids), IngestItem.status == "pending"))
        )


def fail_items(kb: KB, item_ids: list[int], error: str) -> None:
    """Give up on items (retries exhausted): recorded once, like a corrupt file."""
    with kb.db.session() as s:
        s.execute(
            update(IngestItem)
            .where(IngestItem.id.in_(item_ids), IngestItem.status == "pending")
            .values(status="failed", error=error, updated_at=utcnow())
        )


def item_counts(s: Session, job_id: str) -> dict[str, int]:
    rows = s.execute(
        select(IngestItem.status, func.count()).where(IngestItem.job_id == job_id).group_by(IngestItem.status)
    )
    return {status: int(n) for status, n in rows}


def finish_if_done(kb: KB, job_id: str) -> None:
    """Close the job once no item is pending (the last batch to commit sees that)."""
    with kb.db.session() as s:
        counts = item_counts(s, job_id)
        if counts.get("pending", 0):
            return
        ok = counts.get("succeeded", 0) + counts.get("duplicate", 0)
        status = "failed" if ok == 0 and counts.get("failed", 0) else "succeeded"
        done = s.execute(
            update(IngestJob)
            .where(IngestJob.id == job_id, IngestJob.status.in_(("queued", "running")))
            .values(
                status=status,
                processed=ok + counts.get("failed", 0),
                succeeded=counts.get("succeeded", 0),
                duplicates=counts.get("duplicate", 0),
                failed=counts.get("failed", 0),
                error=None if status == "succeeded" else "no file of the dump could be ingested",
                finished_at=utcnow(),
            )
        )
        job = s.get(IngestJob, job_id) if done.rowcount else None
        staged = bool(job and (job.options or {}).get("staged"))
        source = job.source if job else None
    if staged and source:
        remove_staged(Path(source))


def remove_staged(path: Path) -> None:
    """Uploaded dumps live in their own folder under the staging dir."""
    shutil.rmtree(path.parent, ignore_errors=True)
