"""Batch ingestion on real `kb worker` processes: exact counts, duplicates, SIGKILL, concurrent commits."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kombu.transport.redis import Channel
from sqlalchemy import select
from typer.testing import CliRunner

from services.core.config import get_settings
from services.worker.celery_app import make_celery
from storage.job_models import IngestItem
from tests.services.jobs.helpers import consistent_counts, make_dump, wait_done
from tests.services.worker.conftest import Cluster, wait_for


def _collection(c: Cluster, name: str = "dump") -> None:
    from ingest.embedders.factory import get_embedder

    emb = get_embedder("minilm")
    c.kb.store.create_collection(name, None, "minilm", emb.fingerprint, emb.dim)


def test_two_workers_exact_counts_duplicates_and_consistent_indexes(
    cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    c = cluster()
    _collection(c)
    dump = make_dump(tmp_path / "share", 40, pdf_every=10)
    c.start_worker()
    c.start_worker()
    c.wait_ready()
    job_id = c.jobs.submit("dump", dump.root)
    job = wait_done(lambda: c.job(job_id), timeout=180)
    assert job["status"] == "succeeded", job
    assert (job["total"], job["succeeded"], job["duplicates"], job["failed"]) == (43, 40, 0, 3)
    assert sorted(e["path"] for e in job["errors"]) == sorted(dump.bad)
    assert consistent_counts(c.kb, "dump") == (40, 40)
    # Both workers committed batches into the one collection.
    for i in (0, 1):
        assert "kb.ingest_batch" in c.log_text(i) and "succeeded in" in c.log_text(i), c.log_text(i)[-3000:]

    again = c.jobs.submit("dump", dump.root)
    job = wait_done(lambda: c.job(again), timeout=120)
    assert (job["succeeded"], job["duplicates"], job["failed"]) == (0, 40, 3)
    assert consistent_counts(c.kb, "dump") == (40, 40)

    hits = c.kb.searcher.search("dump", "ladder inspection number 5", top_k=1)
    assert hits[0].source_id == "share/team2/ladder-5.md"


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_sigkill_mid_job_is_redelivered_exactly_once(cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    c = cluster(ingest_batch_files=3, worker_visibility_timeout=12)
    _collection(c)
    dump = make_dump(tmp_path / "share", 90)
    first = c.start_worker()
    job_id = c.jobs.submit("dump", dump.root)
    # Kill while a batch is in flight (its items counted as delivered, not yet committed), so the
    # redelivery below is certain rather than a matter of when the kill lands.
    in_flight = _stop_inside_a_batch(c, first, job_id)
    c.kill(first, signal.SIGKILL)
    assert _in_flight(c, job_id) == in_flight, "the stopped worker committed its batch"
    at_kill = c.job(job_id)
    assert at_kill["status"] == "running" and at_kill["processed"] < 93, at_kill
    # The kill can land inside kombu's restore pass (run every second here), leaving its lock
    # held with the lease our config gives it; make that worst case certain.
    lease = make_celery(c.settings).conf.broker_transport_options.get(
        "unacked_mutex_expire", Channel.unacked_mutex_expire
    )
    redis.Redis.from_url(c.settings.redis_url).set(
        c.settings.redis_prefix + Channel.unacked_mutex_key, "dead-worker", ex=lease
    )
    c.start_worker()
    job = wait_done(lambda: c.job(job_id), timeout=180)
    assert job["status"] == "succeeded", job
    assert (job["total"], job["succeeded"], job["duplicates"], job["failed"]) == (93, 90, 0, 3)
    assert consistent_counts(c.kb, "dump") == (90, 90)
    with c.kb.db.session() as s:
        redelivered = s.execute(
            select(IngestItem.attempts, IngestItem.status).where(IngestItem.id.in_(in_flight))
        ).all()
    assert all(a >= 2 and st == "succeeded" for a, st in redelivered), redelivered


def _stop_inside_a_batch(c: Cluster, proc, job_id: str, timeout: float = 120.0) -> list[int]:
    """SIGSTOP the worker while a batch is in flight and return that batch's items.

    Why stop before checking: a batch of three files commits within milliseconds, so a batch seen in
    flight could be committed before a SIGKILL lands (a CI run failed that way). A stopped worker commits
    nothing, so what the check sees after the stop is what the kill leaves behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait_for(
            lambda: c.job(job_id)["processed"] >= 12 and _in_flight(c, job_id),
            max(1.0, deadline - time.monotonic()),
            "the first worker to make progress and be inside a batch",
        )
        os.killpg(proc.pid, signal.SIGSTOP)
        time.sleep(0.3)  # a commit already sent to the database lands before the check
        items = _in_flight(c, job_id)
        if items:
            return items
        os.killpg(proc.pid, signal.SIGCONT)
    raise AssertionError("never stopped the worker inside a batch")


def _in_flight(c: Cluster, job_id: str) -> list[int]:
    """Items a worker has taken (attempts counted) but not committed yet."""
    with c.kb.db.session() as s:
        return list(
            s.scalars(
                select(IngestItem.id).where(
                    IngestItem.job_id == job_id, IngestItem.status == "pending", IngestItem.attempts >= 1
                )
            )
        )


def test_cli_via_workers(
    cluster: Callable[..., Cluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster()
    dump = make_dump(tmp_path / "share", 6)
    c.start_worker()
    for key, value in c.env.items():
        if key.startswith("KB_"):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        from services.cli import app

        result = CliRunner().invoke(app, ["ingest", str(dump.root), "-c", "viacli", "--via-workers"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "9 files: 6 new or replaced, 0 duplicates, 3 failed" in result.output
    assert "broken.pdf" in result.output and "job succeeded" in result.output
    assert consistent_counts(c.kb, "viacli") == (6, 6)


def test_cancel_on_workers_keeps_committed_files_only(
    cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    c = cluster(ingest_batch_files=2)
    _collection(c)
    dump = make_dump(tmp_path / "share", 80, with_bad=False)
    c.start_worker()
    c.wait_ready()
    job_id = c.jobs.submit("dump", dump.root)
    wait_for(lambda: c.job(job_id)["processed"] >= 4, 120, "progress")
    view = c.jobs.cancel(job_id)
    assert view.status == "cancelled" and view.cancelled > 0
    assert view.succeeded + view.cancelled == 80
    queue = redis.Redis.from_url(c.settings.redis_url)
    key = c.settings.redis_prefix + c.settings.worker_queue
    wait_for(lambda: queue.llen(key) == 0, 60, "the remaining tasks to be dropped by the worker")
    time.sleep(2)  # the batch that was in flight, if any, rolls back
    job = c.job(job_id)
    assert job["status"] == "cancelled"
    assert (job["succeeded"], job["cancelled"]) == (view.succeeded, view.cancelled)
    assert consistent_counts(c.kb, "dump") == (view.succeeded, view.succeeded)
