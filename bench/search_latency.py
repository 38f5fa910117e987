"""Search latency over HTTP: 8 concurrent clients against a real `kb serve`, at 10k and 100k chunks.

The collections are filled from the chunks (text + embeddings) of the ingestion
benchmark's data dir, so the texts and vectors are real. 100k is reached by
adding copies whose vectors get small Gaussian noise (renormalised) and whose text
gets a distinct reference number, so neither index sees exact duplicates.

    .venv/bin/python -m bench.ingest            # once, makes bench/out/ingest-data
    .venv/bin/python -m bench.search_latency [--requests 400] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import zaragoza_construction_faq as faq
from sqlalchemy import select

from bench.common import machine, make_kb, table, wait_ready
from ingest.types import ChunkDraft
from storage.models import Chunk, Collection
from storage.store import NewDocument

SIZES = {"c10k": 10_000, "c100k": 100_000}


def build_collections(source_dir: Path, target_dir: Path) -> dict[str, int]:
    src = make_kb(source_dir)
    with src.db.session() as s:
        coll = s.scalars(select(Collection)).first()
        if coll is None:
            raise SystemExit(f"no collection in {source_dir}: run `python -m bench.ingest` first")
        rows = s.execute(
            select(Chunk.text, Chunk.embedding).where(Chunk.collection_id == coll.id).order_by(Chunk.id)
        ).all()
        embedder, fingerprint, dim = coll.embedder, coll.embedder_fingerprint, coll.dim
    src.close()
    texts = [r.text for r in rows]
    vectors = np.frombuffer(b"".join(r.embedding for r in rows), np.float32).reshape(len(rows), dim)
    rng = np.random.default_rng(0)
    dst = make_kb(target_dir)
    counts = {}
    for name, size in SIZES.items():
        dst.store.create_collection(name, None, embedder, fingerprint, dim)
        made = 0
        copy = 0
        while made < size:
            take = min(size - made, len(texts))
            v = vectors[:take]
            t = texts[:take]
            if copy:
                v = v + rng.normal(0, 0.02, v.shape).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                t = [f"{x} Copy reference {copy}-{i}." for i, x in enumerate(t)]
            docs = []
            for start in range(0, take, 50):
                part = t[start : start + 50]
                chunks = [ChunkDraft(i, x, 0, len(x), 1, (), len(x.split()), x) for i, x in enumerate(part)]
                docs.append(
                    NewDocument(
                        f"{name}-{copy}-{start}",
                        None,
                        "text/plain",
                        f"{name}-{copy}-{start}",
                        0,
                        "",
                        chunks,
                        v[start : start + 50],
                    )
                )
            for b in range(0, len(docs), 200):
                dst.store.commit_documents(name, docs[b : b + 200])
            made += take
            copy += 1
        counts[name] = made
    dst.close()
    return counts


def run_load(base: str, collection: str, mode: str, queries: list[str], clients: int, requests: int) -> dict:
    latencies: list[float] = []
    errors = empty = 0
    lock = threading.Lock()
    per_client = requests // clients

    def worker(offset: int) -> None:
        nonlocal errors, empty
        with httpx.Client(base_url=base, timeout=30) as http:
            for i in range(per_client):
                q = queries[(offset * per_client + i) % len(queries)]
                t0 = time.perf_counter()
                r = http.post(
                    f"/v1/collections/{collection}/search", json={"query": q, "mode": mode, "top_k": 10}
                )
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors += 1
                        continue
                    latencies.append(dt)
                    empty += not r.json()["results"]  # e.g. an all-stop-word query in lexical mode

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps": len(latencies) / wall,
        "errors": errors,
        "empty": empty,
        "n": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=Path("bench/out/ingest-data"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--env", action="append", default=[], help="Extra KB_*=value for the server.")
    args = parser.parse_args()

    queries = [it["q"] for it in faq.load(lang="en")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        counts = build_collections(args.source, data)
        print(f"built {counts} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        # search only: the chat generator need not be loaded (override with --env to include it)
        env = {"KB_GENERATOR_PRELOAD": "false", **os.environ}
        env.update(KB_DATA_DIR=str(data), KB_PORT=str(args.port))
        env.update(kv.split("=", 1) for kv in args.env)
        server = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{args.port}"
        try:
            wait_ready(base, server, path="/readyz")
            results = {}
            for collection in SIZES:
                for mode in ("lexical", "dense", "hybrid"):
                    run_load(base, collection, mode, queries, args.clients, args.clients * 5)  # warm-up
                    results[f"{collection}/{mode}"] = run_load(
                        base, collection, mode, queries, args.clients, args.requests
                    )
        finally:
            server.terminate()
            server.wait(30)
    rows = [
        [
            key.split("/")[0].removeprefix("c"),
            key.split("/")[1],
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['rps']:.0f}",
            r["errors"],
            r["empty"],
        ]
        for key, r in results.items()
    ]
    extra = " ".join(args.env) or "default settings"
    print(f"Search over HTTP, {args.clients} clients, {args.requests} requests per row, {extra}; {machine()}")
    print(table(["chunks", "mode", "p50 ms", "p99 ms", "req/s", "errors", "empty"], rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
