"""Ingest jobs: submit a dump, follow its progress, cancel it.

A job lists every file of the dump up front (one `IngestItem` each, refused
archive members already `failed` with their reason), then hands batches of
item ids to a runner. Progress is counted from the items, so it is exact while
several workers write at once.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import insert, select, update

from ingest.archives import ArchiveError, dump_kind, enumerate_dump, sniff_archive
from services.core.container import KB
from services.jobs.batch import TERMINAL, archive_limits, finish_if_done, item_counts, remove_staged
from services.jobs.runner import BrokerUnavailable, Runner, make_runner
from storage.job_models import IngestItem, IngestJob
from storage.models import Collection, utcnow
from storage.store import NotFound

MAX_ERRORS_SHOWN = 1000


class NotAnArchive(Exception):
    """An upload or path that is not a folder, zip, tar or tar.gz (API: 415)."""


class PathForbidden(Exception):
    """A server path outside KB_INGEST_ALLOWED_ROOTS (API: 403)."""


@dataclass(slots=True)
class JobView:
    id: str
    collection: str
    source: str
    status: str
    total: int
    processed: int
    succeeded: int
    duplicates: int
    failed: int
    cancelled: int
    errors: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        for k in ("created_at", "started_at", "finished_at"):
            out[k] = out[k].isoformat() if out[k] else None
        return out


class JobService:
    def __init__(self, kb: KB, runner: Runner | None = None) -> None:
        self.kb = kb
        self.runner = runner or make_runner(kb)

    def close(self) -> None:
        self.runner.close()

    # -- submitting ------------------------------------------------------------------------

    def check_path(self, raw: str) -> Path:
        """A server path the caller may ingest: under an allowed root, after resolving symlinks."""
        roots = self.kb.settings.allowed_roots
        if not roots:
            raise PathForbidden("ingesting server paths is disabled (set KB_INGEST_ALLOWED_ROOTS)")
        path = Path(raw)
        if not path.is_absolute():
            raise PathForbidden("path must be absolute")
        resolved = path.resolve()
        if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
            raise PathForbidden(f"{raw} is outside the allowed roots (KB_INGEST_ALLOWED_ROOTS)")
        if not resolved.exists():
            raise NotFound(f"{raw}: no such file or folder")
        return resolved

    def stage_upload(self, stream: BinaryIO, filename: str | None) -> Path:
        """Copy an uploaded archive to the staging dir (shared with workers); 415 if not an archive."""
        head = stream.read(512)
        if sniff_archive(head) is None:
            raise NotAnArchive("upload a zip, tar or tar.gz archive")
        stream.seek(0)
        name = Path(filename or "upload").name or "upload"
        folder = self.kb.settings.staging_dir / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        with target.open("wb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)
        return target

    def submit(self, collection_name: str, dump: Path, staged: bool = False, label: str | None = None) -> str:
        """Create the job and its items, then dispatch; returns the job id."""
        try:
            return self._submit(collection_name, dump, staged, label)
        except BaseException:
            if staged:
                remove_staged(dump)
            raise

    def _submit(self, collection_name: str, dump: Path, staged: bool, label: str | None) -> str:
        with self.kb.db.session() as s:
            collection = self.kb.store.get_collection(s, collection_name)
            collection_id = collection.id
        try:
            kind = dump_kind(dump)
            entries = enumerate_dump(dump, archive_limits(self.kb.settings))
        except ArchiveError as exc:
            raise NotAnArchive(str(exc)) from exc
        job_id = uuid.uuid4().hex
        now = utcnow()
        with self.kb.db.session() as s:
            s.add(
                IngestJob(
                    id=job_id,
                    collection_id=collection_id,
                    source=str(dump),
                    status="queued",
                    total=len(entries),
                    options={"label": label or dump.name, "kind": kind, "staged": staged},
                    created_at=now,
                )
            )
            s.flush()
            if entries:
                s.execute(
                    insert(IngestItem),
                    [
                        {
                            "job_id": job_id,
                            "path": e.path,
                            "status": "failed" if e.error else "pending",
                            "error": e.error,
                            "size_bytes": e.size,
                            "attempts": 0,
                            "updated_at": now,
                        }
                        for e in entries
                    ],
                )
            pending = list(
                s.scalars(
                    select(IngestItem.id)
                    .where(IngestItem.job_id == job_id, IngestItem.status == "pending")
                    .order_by(IngestItem.id)
                )
            )
        size = self.kb.settings.ingest_batch_files
        batches = [pending[i : i + size] for i in range(0, len(pending), size)]
        if not batches:
            finish_if_done(self.kb, job_id)
            return job_id
        try:
            self.runner.dispatch(job_id, batches)
        except BrokerUnavailable as exc:
            with self.kb.db.session() as s:
                s.execute(
                    update(IngestJob)
                    .where(IngestJob.id == job_id)
                    .values(status="failed", error=str(exc), finished_at=utcnow())
                )
            raise
        return job_id

    def resume(self) -> int:
        """Re-dispatch the pending files of unfinished jobs (the in-process runner after a restart:
        its queue lived in memory). Safe to repeat: a file is committed once however often it runs.
        Returns the number of jobs resumed."""
        with self.kb.db.session() as s:
            open_jobs = list(
                s.scalars(
                    select(IngestJob.id)
                    .where(IngestJob.status.in_(("queued", "running")))
                    .order_by(IngestJob.created_at)
                )
            )
        size = self.kb.settings.ingest_batch_files
        for job_id in open_jobs:
            with self.kb.db.session() as s:
                pending = list(
                    s.scalars(
                        select(IngestItem.id)
                        .where(IngestItem.job_id == job_id, IngestItem.status == "pending")
                        .order_by(IngestItem.id)
                    )
                )
            if not pending:
                finish_if_done(self.kb, job_id)
                continue
            self.runner.dispatch(job_id, [pending[i : i + size] for i in range(0, len(pending), size)])
        return len(open_jobs)

    # -- reading and cancelling ------------------------------------------------------------

    def get(self, job_id: str, with_errors: bool = True) -> JobView:
        with self.kb.db.session() as s:
            job = s.get(IngestJob, job_id)
            if job is None:
                raise NotFound(f"ingest job '{job_id}' not found")
            name = s.scalar(select(Collection.name).where(Collection.id == job.collection_id)) or ""
            counts = item_counts(s, job_id)
            errors: list[dict[str, str]] = []
            if with_errors:
                rows = s.execute(
                    select(IngestItem.path, IngestItem.error)
                    .where(IngestItem.job_id == job_id, IngestItem.status == "failed")
                    .order_by(IngestItem.id)
                    .limit(MAX_ERRORS_SHOWN)
                )
                errors = [{"path": p, "error": e or ""} for p, e in rows]
            ok, dup, bad = counts.get("succeeded", 0), counts.get("duplicate", 0), counts.get("failed", 0)
            return JobView(
                id=job.id,
                collection=name,
                source=str((job.options or {}).get("label") or job.source),
                status=job.status,
                total=job.total,
                processed=ok + dup + bad,
                succeeded=ok,
                duplicates=dup,
                failed=bad,
                cancelled=counts.get("cancelled", 0),
                errors=errors,
                error=job.error,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
            )

    def cancel(self, job_id: str) -> JobView:
        """Pending files are dropped; a batch committing right now either lands whole or not at all."""
        with self.kb.db.session() as s:
            job = s.get(IngestJob, job_id)
            if job is None:
                raise NotFound(f"ingest job '{job_id}' not found")
            changed = s.execute(
                update(IngestJob)
                .where(IngestJob.id == job_id, IngestJob.status.in_(("queued", "running")))
                .values(status="cancelled", finished_at=utcnow(), error="cancelled")
            ).rowcount
            if changed:
                s.execute(
                    update(IngestItem)
                    .where(IngestItem.job_id == job_id, IngestItem.status == "pending")
                    .values(status="cancelled", updated_at=utcnow())
                )
            staged = bool((job.options or {}).get("staged")) and changed
            source = job.source
        if staged:
            remove_staged(Path(source))
        view = self.get(job_id, with_errors=False)
        if changed:
            with self.kb.db.session() as s:
                s.execute(
                    update(IngestJob)
                    .where(IngestJob.id == job_id)
                    .values(
                        processed=view.processed,
                        succeeded=view.succeeded,
                        duplicates=view.duplicates,
                        failed=view.failed,
                    )
                )
        return view

    def follow(self, job_id: str, poll_s: float = 0.5) -> Iterator[JobView]:
        """Progress snapshots whenever they change, ending with the final one."""
        import time

        last: tuple[object, ...] | None = None
        while True:
            view = self.get(job_id, with_errors=False)
            key = (view.status, view.processed, view.cancelled)
            if key != last:
                last = key
                if view.done:
                    yield self.get(job_id)
                    return
                yield view
            time.sleep(poll_s)
