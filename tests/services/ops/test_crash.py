"""Crash safety (issue 7): SIGKILL `kb serve` and `kb worker` processes at random points while they
upload, replace and commit, restart them, and check that nothing acknowledged was lost and that the
database, FAISS and BM25 agree (checked on the files by `kb doctor`'s code).

Production shape: PostgreSQL, Redis, a real API process taking single uploads and a real Celery
worker ingesting batch jobs into the same collection at the same time. The API process is killed
and restarted; the worker's pool process is killed and the Celery master forks a new one (its
batch goes back to the queue). Seeded: the seed is printed, `KB_CRASH_SEED=...` replays its choices
(the timing of the machine still varies).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from services.core.config import Settings
from services.core.container import build_kb
from services.ops.doctor import run_doctor
from tests.services.api.tcp_proxy import free_port
from tests.services.ops.crash_harness import Proc, Uploader, Uploads, make_notes_dump, wait_http

API_KILLS = 7  # + 1 final kill before the last restart
WORKER_KILLS = 13
REDIS_URL = os.environ.get("KB_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")


def _submit(base: str, root: Path) -> str | None:
    try:
        r = httpx.post(f"{base}/v1/collections/plant/ingest-jobs", json={"path": str(root)}, timeout=60)
    except httpx.HTTPError:
        return None  # the API was being killed: not acknowledged
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def _job(base: str, job_id: str) -> dict | None:
    try:
        return httpx.get(f"{base}/v1/ingest-jobs/{job_id}", timeout=30).json()
    except httpx.HTTPError:
        return None


class WorkerKiller(threading.Thread):
    """Keeps a batch job running and kills the worker's pool process at random moments in it."""

    def __init__(self, base: str, worker: Proc, rng: random.Random, dumps: Path, target: int) -> None:
        super().__init__(daemon=True)
        self.base, self.worker, self.rng, self.dumps, self.target = base, worker, rng, dumps, target
        self.jobs: dict[str, tuple[str, int]] = {}  # acknowledged job id -> (label, files)
        self.kills = 0
        self.made = 0
        self.error: BaseException | None = None

    def _ready_count(self) -> int:
        return self.worker.log.read_text(errors="replace").count("kb worker process ready")

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _run(self) -> None:
        current: str | None = None
        while self.kills < self.target:
            if current is None or (_job(self.base, current) or {}).get("status") in ("succeeded", "failed"):
                self.made += 1
                label = f"dump{self.made}"  # a fresh folder even if the last submit was cut
                files = make_notes_dump(self.dumps / label, label, 16)
                current = _submit(self.base, self.dumps / label)
                if current is None:
                    time.sleep(0.5)
                    continue
                self.jobs[current] = (label, len(files))
            ready = self._ready_count()
            deadline = time.monotonic() + 120
            while self._ready_count() < ready or not self.worker.children():
                assert time.monotonic() < deadline, "worker pool process did not come back"
                time.sleep(0.1)
            time.sleep(self.rng.uniform(0.2, 2.5))
            children = self.worker.children()
            if children:
                victim = self.rng.choice(children)
                victim.kill()
                victim.wait(30)
                self.kills += 1
                # The master forks a replacement, which logs "ready" once it has its embedder.
                deadline = time.monotonic() + 120
                while self._ready_count() <= ready:
                    assert time.monotonic() < deadline, "no replacement pool process"
                    time.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_sigkill_api_and_worker_lose_nothing(pg_database: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("KB_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"\ncrash test seed {seed} (KB_CRASH_SEED={seed} replays it)")
    rng = random.Random(seed)
    prefix = f"kbcrash-{uuid.uuid4().hex[:8]}:"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": pg_database,
        "redis_url": REDIS_URL,
        "redis_prefix": prefix,
        "worker_queue": prefix + "ingest",
        "ingest_runner": "celery",
        "ingest_batch_files": 4,
        "ingest_max_attempts": 100,  # kills here are the test's, not a poison file's
        "ingest_allowed_roots": str(tmp_path / "dumps"),
        "commit_lock_ttl": 3,
        "generator": "fake",
        "generator_preload": False,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update({f"KB_{k.upper()}": str(v) for k, v in values.items()})
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    (tmp_path / "dumps").mkdir()
    api = Proc(["serve", "--port", str(port)], env, tmp_path / "api.log")
    worker = Proc(["worker", "--concurrency", "1", "--loglevel", "INFO"], env, tmp_path / "worker.log")
    uploads = Uploads()
    restarts: list[float] = []
    killer = WorkerKiller(base, worker, random.Random(seed + 1), tmp_path / "dumps", WORKER_KILLS)
    try:
        api.start()
        worker.start()
        wait_http(base, api)
        assert httpx.post(f"{base}/v1/collections", json={"name": "plant"}, timeout=120).status_code == 201
        killer.start()
        next_note = 0
        for _ in range(API_KILLS):
            uploader = Uploader(base, "plant", uploads, start_at=next_note, sources=12)
            acked = uploads.acked
            uploader.start()
            # Kill mid-stream: once this server has answered one upload (its embedder is loaded), at a
            # random moment of the next ones (parse, embed, DB commit, index commit or the answer).
            deadline = time.monotonic() + 60
            while uploads.acked == acked and uploader.is_alive():
                assert time.monotonic() < deadline, "no upload was acknowledged after a restart"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 2.0))
            api.sigkill()
            uploader.join(60)
            next_note = uploader.n
            api.start()
            restarts.append(wait_http(base, api))
        killer.join(400)
        assert not killer.is_alive(), "worker kills did not finish"
        assert killer.error is None, killer.error
        deadline = time.monotonic() + 180
        for job_id in killer.jobs:
            while (job := _job(base, job_id)) is None or job["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.5)
        api.sigkill()  # one last crash, then the restart whose state is checked
        api.start()
        restarts.append(wait_http(base, api))
        _check(base, uploads, killer.jobs)
    finally:
        for proc in (api, worker):
            if proc.alive():
                proc.sigkill()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    kb = build_kb(Settings(**values), run_migrations=False)
    try:
        report = run_doctor(kb)
    finally:
        kb.close()
    assert report.ok, report.as_dict()
    (plant,) = report.collections
    assert plant.db_chunks == plant.faiss.count == plant.bm25.count > 0
    mid_task = worker.log.read_text(errors="replace").count("Task handler raised error: WorkerLostError")
    stale = api.log.read_text(errors="replace").count("are stale (")
    print(
        f"crash test: {API_KILLS + 1} API kills ({stale} restarts found stale index files and rebuilt "
        f"them), {killer.kills} worker kills ({mid_task} in the middle of a batch); {uploads.acked} uploads "
        f"acknowledged, {uploads.cut} cut by a kill; {len(killer.jobs)} jobs; restart to ready "
        f"{min(restarts):.1f}-{max(restarts):.1f} s; doctor: {plant.db_chunks} chunks agree"
    )
    assert API_KILLS + 1 + killer.kills >= 20


def _check(base: str, uploads: Uploads, jobs: dict[str, tuple[str, int]]) -> None:
    docs: list[dict] = []
    with httpx.Client(base_url=base, timeout=60) as client:
        while True:
            page = client.get("/v1/collections/plant/documents", params={"offset": len(docs), "limit": 500})
            assert page.status_code == 200, page.text
            docs += page.json()["items"]
            if len(docs) >= page.json()["total"]:
                break
        by_source = {d["source_id"]: d for d in docs}
        assert len(by_source) == len(docs), "a source id was stored twice"
        for source_id in uploads.attempts:
            allowed = uploads.allowed(source_id)
            if allowed is None:
                continue  # never acknowledged: present or not, both are right
            assert source_id in by_source, f"acknowledged upload {source_id} was lost"
            assert by_source[source_id]["content_sha256"] in allowed, (source_id, by_source[source_id])
        for job_id, (label, files) in jobs.items():
            job = client.get(f"/v1/ingest-jobs/{job_id}").json()
            assert job["status"] == "succeeded" and job["failed"] == 0, job
            assert job["succeeded"] + job["duplicates"] == files, job
            stored = [s for s in by_source if s.startswith(f"{label}/")]
            assert len(stored) == files, (label, len(stored), files)
        # Every note's stored content is findable by its unique token (BM25) after all the crashes.
        for source_id in uploads.attempts:
            if source_id not in by_source:
                continue
            token = uploads.tokens[by_source[source_id]["content_sha256"]]
            r = client.post("/v1/collections/plant/search", json={"query": token, "mode": "lexical"})
            assert r.json()["results"][0]["source_id"] == source_id, (token, r.text)
