"""Real `kb worker` subprocesses on the real Redis at 127.0.0.1:6379, one key prefix and queue per test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from services.core.config import Settings
from services.core.container import KB, build_kb
from services.jobs.runner import CeleryRunner
from services.jobs.service import JobService

REDIS_URL = os.environ.get("KB_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
KB_BIN = Path(sys.executable).with_name("kb")


@dataclass
class Cluster:
    env: dict[str, str]
    settings: Settings
    kb: KB
    jobs: JobService
    logs: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, concurrency: int = 1) -> subprocess.Popen:
        log = (self.logs / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [str(KB_BIN), "worker", "--concurrency", str(concurrency), "--loglevel", "INFO"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL reaches the pool children too
        )
        self.workers.append(proc)
        return proc

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Every started worker has loaded its embedder (so all of them take part at once)."""
        deadline = time.monotonic() + timeout
        while not all("kb worker process ready" in self.log_text(i) for i in range(len(self.workers))):
            for proc in self.workers:
                assert proc.poll() is None, "a worker exited during start-up"
            if time.monotonic() > deadline:
                raise AssertionError("workers did not become ready")
            time.sleep(0.2)

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def log_text(self, index: int) -> str:
        return (self.logs / f"worker-{index}.log").read_text(errors="replace")

    def job(self, job_id: str) -> dict:
        return self.jobs.get(job_id).as_dict()


@pytest.fixture
def cluster(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []
    prefix = f"kbtest-{uuid.uuid4().hex[:10]}:"

    def factory(**overrides: object) -> Cluster:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "redis_url": REDIS_URL,
            "redis_prefix": prefix,
            "worker_queue": prefix + "ingest",
            "ingest_runner": "celery",
            "ingest_batch_files": 4,
            "worker_visibility_timeout": 20,
            "worker_restore_interval": 1,
            "commit_lock_ttl": 6,
            **overrides,
        }
        settings = Settings(**values)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
        env.update({f"KB_{k.upper()}": str(v) for k, v in values.items()})
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        kb = build_kb(settings)  # migrates; the workers never do
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        c = Cluster(env, settings, kb, JobService(kb, CeleryRunner(kb)), logs)
        made.append(c)
        return c

    yield factory
    client = redis.Redis.from_url(REDIS_URL)
    for c in made:
        for proc in c.workers:
            if proc.poll() is None:
                c.kill(proc, signal.SIGTERM)
        c.kb.close()
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
