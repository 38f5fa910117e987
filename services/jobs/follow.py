"""`kb ingest --via-workers`: submit dumps to the Celery workers and follow them with a progress bar."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from services.core.container import KB
from services.jobs.runner import CeleryRunner
from services.jobs.service import JobService, JobView


def ingest_via_workers(
    kb: KB, paths: list[Path], collection: str, console: Console, poll_s: float = 0.5
) -> int:
    """Returns the number of failed files (the CLI exits 1 if any)."""
    jobs = JobService(kb, CeleryRunner(kb))
    failed = 0
    for path in paths:
        job_id = jobs.submit(collection, path.resolve())
        console.print(f"job {job_id}: {path} -> {collection} (kb worker processes it)")
        view = _follow(jobs, job_id, console, poll_s)
        failed += view.failed
        console.print(
            f"{view.total} files: {view.succeeded} new or replaced, {view.duplicates} duplicates, "
            f"{view.failed} failed, {view.cancelled} cancelled; job {view.status}"
        )
        if view.errors:
            console.print("failed files:")
            for err in view.errors:
                console.print(f"  {err['path']}: {err['error']}", soft_wrap=True, markup=False)
    return failed


def _follow(jobs: JobService, job_id: str, console: Console, poll_s: float) -> JobView:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        view = jobs.get(job_id, with_errors=False)
        task = progress.add_task("queued", total=view.total)
        while True:
            view = jobs.get(job_id, with_errors=False)
            progress.update(task, completed=view.processed + view.cancelled, description=view.status)
            if view.done:
                return jobs.get(job_id)
            time.sleep(poll_s)
