"""Celery tasks: one per batch of an ingest job; the work itself is services.jobs.batch."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_process_init

from services.core.config import get_settings
from services.core.container import KB, build_kb
from services.jobs.batch import TRANSIENT, fail_items, finish_if_done, process_batch
from services.worker.celery_app import app
from services.worker.locks import RedisCommitLock

log = logging.getLogger(__name__)

_state: dict[str, object] = {}
_guard = threading.Lock()


def worker_kb() -> tuple[KB, RedisCommitLock]:
    """This process's kb (built once; the API runs the migrations) and commit lock."""
    with _guard:
        if "kb" not in _state:
            settings = get_settings()
            _state["kb"] = build_kb(settings, run_migrations=False)
            ttl = settings.commit_lock_ttl
            _state["lock"] = RedisCommitLock(settings.redis_url, settings.redis_prefix, ttl)
    return _state["kb"], _state["lock"]  # type: ignore[return-value]


@worker_process_init.connect
def _warm(**_: object) -> None:
    """Load the database engine and the default embedder before taking any task."""
    kb, _ = worker_kb()
    kb.db.dispose()  # never share a connection pool across fork
    try:
        kb.pipeline.embedder_for(kb.settings.default_embedder).embed_passages(["warm-up"])
    except Exception:  # a missing model must not kill the worker; tasks will report it
        log.exception("could not preload the embedder")
    log.info("kb worker process ready")


@app.task(
    name="kb.ingest_batch",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT,
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
)
def ingest_batch(self, job_id: str, item_ids: list[int]) -> None:  # noqa: ANN001
    kb, lock = worker_kb()
    try:
        process_batch(kb, job_id, item_ids, commit_lock=lock)
    except TRANSIENT as exc:
        if self.request.retries >= self.max_retries:
            fail_items(kb, item_ids, f"gave up after {self.max_retries} retries: {exc}")
            finish_if_done(kb, job_id)
            return
        raise
