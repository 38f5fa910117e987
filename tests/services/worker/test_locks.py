"""The Redis commit lock: one holder at a time across processes, and a dead holder's lease expires."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from services.jobs.batch import TransientError
from services.worker.locks import RedisCommitLock
from tests.services.worker.conftest import REDIS_URL


@pytest.fixture
def prefix() -> str:
    p = f"kbtest-{uuid.uuid4().hex[:10]}:"
    yield p
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=p + "*"):
        client.delete(key)


def test_holders_never_overlap_and_the_lease_is_renewed(prefix: str) -> None:
    inside, overlaps = [0], [0]
    guard = threading.Lock()

    def work(lock: RedisCommitLock) -> None:
        for _ in range(5):
            with lock("coll"):
                with guard:
                    inside[0] += 1
                    overlaps[0] += inside[0] > 1
                time.sleep(0.02)
                with guard:
                    inside[0] -= 1

    locks = [RedisCommitLock(REDIS_URL, prefix, ttl_s=2) for _ in range(3)]
    threads = [threading.Thread(target=work, args=(lk,)) for lk in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 0

    lock = RedisCommitLock(REDIS_URL, prefix, ttl_s=2)
    with lock("long"):
        time.sleep(2.5)  # longer than the lease: the renewer keeps it
        assert lock.client.pttl(lock.key("long")) > 0


def test_dead_holder_lease_expires(prefix: str) -> None:
    holder = RedisCommitLock(REDIS_URL, prefix, ttl_s=2)
    # A holder that died: the key is there, nobody renews or releases it.
    holder.client.set(holder.key("c"), "dead-worker-token", px=2000)
    waiter = RedisCommitLock(REDIS_URL, prefix, ttl_s=2, wait_s=0.3)
    with pytest.raises(TransientError, match="busy"), waiter("c"):
        pass
    patient = RedisCommitLock(REDIS_URL, prefix, ttl_s=2, wait_s=5)
    start = time.monotonic()
    with patient("c"):
        assert time.monotonic() - start < 3
