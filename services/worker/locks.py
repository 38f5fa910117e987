"""The per-collection commit lock across processes and machines: a Redis lease.

Held around `KnowledgeStore.commit_documents`, so the FAISS and BM25 files of a
collection are never written by two processes at once, wherever they run. The
lease (KB_COMMIT_LOCK_TTL) is renewed by a thread while held, and simply
expires if its holder is SIGKILLed, so a dead worker cannot block the others
for longer than one lease. The IndexManager's file lock stays underneath for
processes that share one data dir.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import LockError, RedisError

from services.jobs.batch import TransientError


class RedisCommitLock:
    def __init__(self, url: str, prefix: str, ttl_s: int, wait_s: float = 120.0) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.wait_s = wait_s

    def key(self, uid: str) -> str:
        return f"{self.prefix}commit-lock:{uid}"

    @contextmanager
    def __call__(self, uid: str) -> Iterator[None]:
        lock = self.client.lock(
            self.key(uid), timeout=self.ttl_s, blocking_timeout=self.wait_s, thread_local=False
        )
        try:
            acquired = lock.acquire()
        except RedisError as exc:
            raise TransientError(f"commit lock unavailable: {exc}") from exc
        if not acquired:
            raise TransientError(f"commit lock of collection {uid} busy for {self.wait_s:g} s")
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.ttl_s / 3):
                try:
                    lock.reacquire()
                except (LockError, RedisError):
                    return

        keeper = threading.Thread(target=renew, name="kb-commit-lock", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()
            with contextlib.suppress(LockError, RedisError):
                lock.release()  # if it expired, the DB generation check still catches a stale index
