"""The Celery app: Redis broker and result backend from KB_REDIS_URL.

Tasks are acknowledged late (after the batch committed) and rejected back to the
queue if the worker process dies, so a SIGKILLed worker's batches are redelivered
(after KB_WORKER_VISIBILITY_TIMEOUT seconds); prefetch is one task per process so
a dying worker strands at most one batch per process.

kombu guards its restore pass with a Redis lock that expires after 300 s by default;
a worker SIGKILLed inside that pass (it runs every restore interval) would leave the
lock behind and stop every surviving worker from redelivering for five minutes. The
pass takes milliseconds, and a restore is one WATCHed transaction per message (two
restorers cannot both requeue it), so the lock here lives a few restore intervals.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from services.core.config import Settings, get_settings


def restore_mutex_expire(settings: Settings) -> int:
    """Seconds a dead worker's restore lock can block redelivery."""
    return max(5, 2 * settings.worker_restore_interval)


def make_celery(settings: Settings) -> Celery:
    url = settings.redis_url
    app = Celery("kb", broker=url, backend=url, include=["services.worker.tasks"])
    transport = {
        "visibility_timeout": settings.worker_visibility_timeout,
        "unacked_restore_interval": settings.worker_restore_interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": restore_mutex_expire(settings),
        "global_keyprefix": settings.redis_prefix,
    }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.worker_queue,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        result_backend_transport_options={"global_keyprefix": settings.redis_prefix},
        broker_connection_retry_on_startup=True,
        worker_proc_alive_timeout=120,  # children load the embedder before taking work
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache(maxsize=8)
def _cached(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def get_celery(settings: Settings | None = None) -> Celery:
    """One app per distinct settings (tests use several Redis prefixes in one process)."""
    settings = settings or get_settings()
    return _cached(settings.model_dump_json())


app = get_celery()
