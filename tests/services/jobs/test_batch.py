"""The shared batch code: idempotent under redelivery, duplicated delivery, crashes and poison files."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from services.core.container import KB
from services.jobs import batch as batch_mod
from services.jobs.batch import process_batch
from services.jobs.runner import InProcessRunner
from services.jobs.service import JobService
from storage.job_models import IngestItem
from tests.services.jobs.helpers import consistent_counts, make_dump, wait_done


class _NoRunner:
    """Records the batches instead of running them, so the test drives process_batch itself."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def dispatch(self, job_id: str, batches: list[list[int]]) -> None:
        self.batches.extend(batches)

    def close(self) -> None:
        pass


@pytest.fixture
def kb(make_kb: Callable[..., KB]) -> KB:
    kb = make_kb(ingest_batch_files=5)
    emb = kb.pipeline.embedder_for("minilm")
    kb.store.create_collection("c", None, "minilm", emb.fingerprint, emb.dim)
    return kb


def _submit(kb: KB, root: Path) -> tuple[JobService, _NoRunner, str]:
    runner = _NoRunner()
    jobs = JobService(kb, runner)
    return jobs, runner, jobs.submit("c", root)


def test_duplicated_delivery_commits_each_file_once(kb: KB, tmp_path: Path) -> None:
    dump = make_dump(tmp_path / "d", 12)
    jobs, runner, job_id = _submit(kb, dump.root)
    assert len(runner.batches) == 3  # 15 files in batches of 5
    for ids in runner.batches:  # every batch delivered twice, at the same time
        threads = [threading.Thread(target=process_batch, args=(kb, job_id, ids)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    job = jobs.get(job_id)
    assert (job.status, job.succeeded, job.duplicates, job.failed) == ("succeeded", 12, 0, 3)
    assert consistent_counts(kb, "c") == (12, 12)


def test_crash_inside_the_commit_leaves_nothing_and_redelivery_completes(
    kb: KB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = make_dump(tmp_path / "d", 5, with_bad=False)
    jobs, runner, job_id = _submit(kb, dump.root)
    [ids] = runner.batches
    real = batch_mod._write_outcomes

    def crash(s, outcomes):  # noqa: ANN001, ANN202
        real(s, outcomes)
        raise KeyboardInterrupt("worker dies after writing, before the commit")

    monkeypatch.setattr(batch_mod, "_write_outcomes", crash)
    with pytest.raises(KeyboardInterrupt):
        process_batch(kb, job_id, ids)
    assert consistent_counts(kb, "c") == (0, 0)
    assert jobs.get(job_id).processed == 0
    monkeypatch.setattr(batch_mod, "_write_outcomes", real)
    process_batch(kb, job_id, ids)  # the redelivery
    process_batch(kb, job_id, ids)  # and a late duplicate of it
    job = jobs.get(job_id)
    assert (job.status, job.succeeded, job.duplicates) == ("succeeded", 5, 0)
    assert consistent_counts(kb, "c") == (5, 5)
    with kb.db.session() as s:
        assert set(s.scalars(select(IngestItem.attempts).where(IngestItem.job_id == job_id))) == {2}


def test_poison_batch_fails_after_max_deliveries(kb: KB, tmp_path: Path) -> None:
    dump = make_dump(tmp_path / "d", 3, with_bad=False)
    jobs, runner, job_id = _submit(kb, dump.root)
    [ids] = runner.batches
    with kb.db.session() as s:  # as if a worker had died on this batch every time but the last
        for item in s.scalars(select(IngestItem).where(IngestItem.id.in_(ids))):
            item.attempts = kb.settings.ingest_max_attempts - 1
    process_batch(kb, job_id, ids)  # the last allowed delivery still runs
    assert (jobs.get(job_id).status, jobs.get(job_id).succeeded) == ("succeeded", 3)

    dump2 = make_dump(tmp_path / "d2", 3, with_bad=False)
    for f in dump2.root.rglob("*.md"):
        f.write_text(f.read_text() + "\nsecond dump\n")
    jobs, runner, job_id = _submit(kb, dump2.root)
    [ids] = runner.batches
    with kb.db.session() as s:
        for item in s.scalars(select(IngestItem).where(IngestItem.id.in_(ids))):
            item.attempts = kb.settings.ingest_max_attempts
    process_batch(kb, job_id, ids)
    job = jobs.get(job_id)
    assert (job.status, job.failed) == ("failed", 3)
    assert all("gave up after" in e["error"] for e in job.errors)


def test_in_process_runner_retries_transient_errors(
    kb: KB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = make_dump(tmp_path / "d", 6, with_bad=False)
    calls = {"n": 0}
    real = batch_mod.process_batch

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OperationalError("select 1", {}, Exception("database is locked"))
        return real(*args, **kwargs)

    import services.jobs.runner as runner_mod

    monkeypatch.setattr(runner_mod, "process_batch", flaky)
    jobs = JobService(kb, InProcessRunner(kb, threads=1, backoff_s=0.01))
    job_id = jobs.submit("c", dump.root)
    job = wait_done(lambda: jobs.get(job_id).as_dict(), timeout=60)
    jobs.close()
    assert (job["status"], job["succeeded"]) == ("succeeded", 6) and calls["n"] == 4
    assert consistent_counts(kb, "c") == (6, 6)


def test_cancelled_job_commits_nothing_more(kb: KB, tmp_path: Path) -> None:
    dump = make_dump(tmp_path / "d", 10, with_bad=False)
    jobs, runner, job_id = _submit(kb, dump.root)
    process_batch(kb, job_id, runner.batches[0])
    view = jobs.cancel(job_id)
    assert (view.status, view.succeeded, view.cancelled) == ("cancelled", 5, 5)
    process_batch(kb, job_id, runner.batches[1])  # a task still queued when the job was cancelled
    assert consistent_counts(kb, "c") == (5, 5)
    assert jobs.get(job_id).status == "cancelled"


def test_in_process_runner_resumes_unfinished_jobs_after_a_restart(kb: KB, tmp_path: Path) -> None:
    dump = make_dump(tmp_path / "d", 7)
    jobs, runner, job_id = _submit(kb, dump.root)  # the process "dies" before running anything
    process_batch(kb, job_id, runner.batches[0])
    assert jobs.get(job_id).status == "running"
    restarted = JobService(kb, InProcessRunner(kb, threads=2))
    assert restarted.resume() == 1
    job = wait_done(lambda: restarted.get(job_id).as_dict(), timeout=60)
    restarted.close()
    assert (job["status"], job["succeeded"], job["failed"]) == ("succeeded", 7, 3)
    assert consistent_counts(kb, "c") == (7, 7)
