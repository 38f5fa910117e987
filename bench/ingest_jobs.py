"""Batch ingestion on Celery workers: documents/s with 1 and 2 workers, and submit-to-searchable time.

Generates a dump of small documents (Markdown, text and HTML of ~120 words built
from the FAQ sentences, each with a unique reference), then for each worker
count starts that many real `kb worker --concurrency 1` processes (each its own
process, as if on its own machine) against a fresh PostgreSQL database and the
real Redis, submits the dump as one job, and measures:

- documents/s from submit until the job has finished;
- the time from submit until every document is searchable from a separate
  process (this one, like `kb serve`: it loads the index files the workers wrote);
- the per-collection commit cost (time holding the commit lock, and time waiting
  for it) from the workers' logs.

    .venv/bin/python -m bench.ingest_jobs [--docs 5000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import git_rev, machine, table
from bench.corpus import _sentences
from services.core.config import Settings
from services.core.container import build_kb
from services.jobs.runner import CeleryRunner
from services.jobs.service import JobService

PG_ADMIN = os.environ.get("KB_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("KB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/4")
_COMMIT = re.compile(r"commit of (\d+) documents into \S+: ([\d.]+) s holding the lock, ([\d.]+) s waiting")


def generate(root: Path, n: int, seed: int = 5) -> list[str]:
    """n small documents; returns the unique reference of each, in order."""
    marker = root / f".complete-{n}"
    rng = random.Random(seed)
    refs = [f"KB{i:05d}X{rng.randint(100, 999)}" for i in range(n)]
    if marker.exists():
        return refs
    shutil.rmtree(root, ignore_errors=True)
    sentences = _sentences()
    for i, ref in enumerate(refs):
        body = " ".join(rng.choice(sentences) for _ in range(5)) + f" Reference {ref}."
        folder = root / f"dept{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        kind = i % 3
        if kind == 0:
            (folder / f"note-{i}.md").write_text(f"# Note {i}\n\n{body}\n")
        elif kind == 1:
            (folder / f"memo-{i}.txt").write_text(f"Memo {i}\n\n{body}\n")
        else:
            html = f"<html><head><title>Page {i}</title></head><body><main><h1>Page {i}</h1><p>{body}</p>"
            (folder / f"page-{i}.html").write_text(html + "</main></body></html>")
    marker.write_text("ok")
    return refs


def fresh_pg() -> tuple[str, str]:
    name = f"kb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


def drop_pg(name: str) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run(
    n_workers: int, dump: Path, refs: list[str], out: Path, batch: int, threads: int
) -> dict[str, object]:
    db_name, url = fresh_pg()
    data = out / f"data-{n_workers}w"
    shutil.rmtree(data, ignore_errors=True)
    prefix = f"kbbench-{uuid.uuid4().hex[:8]}:"
    values = {
        "data_dir": str(data),
        "database_url": url,
        "redis_url": REDIS_URL,
        "redis_prefix": prefix,
        "worker_queue": prefix + "ingest",
        "ingest_runner": "celery",
        "ingest_batch_files": batch,
    }
    settings = Settings(**values)
    kb = build_kb(settings)
    emb = kb.pipeline.embedder_for("minilm")
    kb.store.create_collection("bench", None, "minilm", emb.fingerprint, emb.dim)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update({f"KB_{k.upper()}": str(v) for k, v in values.items()})
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    logs = [out / f"worker-{n_workers}w-{i}.log" for i in range(n_workers)]
    kb_bin = Path(sys.executable).with_name("kb")
    procs = [
        subprocess.Popen(
            [str(kb_bin), "worker", "--concurrency", "1"],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for log in logs
    ]
    try:
        deadline = time.monotonic() + 180
        while not all("Loading weights: 100%" in log.read_text(errors="replace") for log in logs):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.5)
        time.sleep(1.0)
        load_before = os.getloadavg()[0]
        jobs = JobService(kb, CeleryRunner(kb))
        start = time.perf_counter()
        job_id = jobs.submit("bench", dump)
        submitted = time.perf_counter() - start
        while not (view := jobs.get(job_id, with_errors=False)).done:
            time.sleep(0.25)
        done = time.perf_counter() - start
        # Searchable from another process: this one loads the files the workers wrote.
        probe = random.Random(1).sample(range(len(refs)), 20) + [len(refs) - 1]
        for i in probe:
            hits = kb.searcher.search("bench", f"Reference {refs[i]}", top_k=1, mode="lexical")
            assert hits and refs[i] in hits[0].text, (i, hits[:1])
        searchable = time.perf_counter() - start
        load_after = os.getloadavg()[0]
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    commits = [m for log in logs for m in _COMMIT.findall(log.read_text(errors="replace"))]
    held = [float(h) for _, h, _ in commits]
    waited = [float(w) for _, _, w in commits]
    per_worker = [len(_COMMIT.findall(log.read_text(errors="replace"))) for log in logs]
    with kb.db.session() as s:
        _, chunks = kb.store.counts(s, kb.store.get_collection(s, "bench"))
    kb.close()
    drop_pg(db_name)
    return {
        "workers": n_workers,
        "torch_threads": threads,
        "docs": view.succeeded,
        "failed": view.failed,
        "chunks": chunks,
        "submit_s": submitted,
        "done_s": done,
        "searchable_s": searchable,
        "docs_per_s": view.succeeded / done,
        "commits": len(held),
        "commits_per_worker": per_worker,
        "commit_mean_ms": 1000 * statistics.mean(held),
        "commit_p95_ms": 1000 * sorted(held)[int(0.95 * (len(held) - 1))],
        "wait_mean_ms": 1000 * statistics.mean(waited),
        "lock_busy_share": sum(held) / done,
        "load": (load_before, load_after),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=16, help="KB_INGEST_BATCH_FILES")
    parser.add_argument("--out", type=Path, default=Path("bench/out/ingest-jobs"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (OMP_NUM_THREADS)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dump = (args.out / f"dump-{args.docs}").resolve()
    refs = generate(dump, args.docs)
    rows = []
    for n in args.workers:
        r = run(n, dump, refs, args.out, args.batch, args.threads)
        print(r, flush=True)
        rows.append(
            [
                r["workers"],
                r["docs"],
                r["chunks"],
                f"{r['docs_per_s']:.1f}",
                f"{r['submit_s']:.1f}",
                f"{r['done_s']:.1f}",
                f"{r['searchable_s']:.1f}",
                f"{r['commits']} ({'/'.join(map(str, r['commits_per_worker']))})",
                f"{r['commit_mean_ms']:.0f} / {r['commit_p95_ms']:.0f}",
                f"{r['wait_mean_ms']:.0f}",
                f"{100 * r['lock_busy_share']:.1f}%",
                f"{r['load'][0]:.1f} / {r['load'][1]:.1f}",
            ]
        )
    headers = [
        "workers",
        "docs",
        "chunks",
        "docs/s",
        "submit s",
        "done s",
        "searchable s",
        "commits (per worker)",
        "commit ms mean / p95",
        "lock wait ms",
        "lock busy",
        "load avg before / after",
    ]
    setup = f"batch {args.batch} files per task and commit, {args.threads} torch thread(s) per worker"
    print(f"\n{machine()}, git {git_rev()}, {setup}\n")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
