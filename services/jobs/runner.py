"""Who runs the batches of a job: a thread pool in this process, or Celery workers.

Both call `services.jobs.batch.process_batch`; only the transport and the retry
loop differ. The in-process runner is the embedded default (no Redis needed).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from services.core.container import KB
from services.jobs.batch import TRANSIENT, fail_items, finish_if_done, process_batch

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The job could not be handed to the workers (API: 503)."""


class Runner(Protocol):
    def dispatch(self, job_id: str, batches: list[list[int]]) -> None: ...

    def close(self) -> None: ...


class InProcessRunner:
    """A thread pool; transient errors are retried with backoff, like the Celery task."""

    def __init__(self, kb: KB, threads: int, retries: int = 6, backoff_s: float = 0.2) -> None:
        self.kb = kb
        self.retries = retries
        self.backoff_s = backoff_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kb-ingest")
        self._closed = threading.Event()

    def dispatch(self, job_id: str, batches: list[list[int]]) -> None:
        for ids in batches:
            self._pool.submit(self._run, job_id, ids)

    def _run(self, job_id: str, ids: list[int]) -> None:
        for attempt in range(self.retries + 1):
            if self._closed.is_set():
                return  # items stay pending; nothing half done
            try:
                process_batch(self.kb, job_id, ids)
                return
            except TRANSIENT as exc:
                log.warning("ingest job %s: transient error (%s), retry %d", job_id, exc, attempt + 1)
                time.sleep(self.backoff_s * 2**attempt)
            except Exception:
                log.exception("ingest job %s: batch crashed", job_id)
                break
        fail_items(self.kb, ids, "gave up after repeated errors (see the server log)")
        finish_if_done(self.kb, job_id)

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


class CeleryRunner:
    """Sends one task per batch to the workers' queue on Redis."""

    def __init__(self, kb: KB) -> None:
        self.kb = kb

    def dispatch(self, job_id: str, batches: list[list[int]]) -> None:
        from services.worker.celery_app import get_celery

        app = get_celery(self.kb.settings)
        queue = self.kb.settings.worker_queue
        try:
            with app.producer_or_acquire() as producer:
                for ids in batches:
                    app.send_task(
                        "kb.ingest_batch", (job_id, ids), queue=queue, producer=producer, ignore_result=True
                    )
        except Exception as exc:  # kombu/redis connection errors of every flavour
            where = self.kb.settings.redis_url.rsplit("@", 1)[-1]  # never echo a password
            raise BrokerUnavailable(f"cannot reach the task broker at {where}: {exc}") from exc

    def close(self) -> None:
        pass


def make_runner(kb: KB) -> Runner:
    if kb.settings.ingest_runner == "celery":
        return CeleryRunner(kb)
    return InProcessRunner(kb, kb.settings.ingest_threads)
