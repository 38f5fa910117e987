"""Ingestion throughput on this machine: documents/s, chunks/s and where the time goes.

Runs kb's own in-process pipeline (what `kb ingest` runs) over the generated
mixed corpus of bench/corpus.py into a fresh data dir (kept for the search
benchmark), and reports the share of wall time in each stage.

    .venv/bin/python -m bench.ingest [--docs 2000] [--out bench/out/ingest-data]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path

from bench.common import git_rev, machine, make_kb, table
from bench.corpus import generate
from ingest.embedders.factory import get_embedder
from ingest.pipeline import SourceFile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--corpus", type=Path, default=Path("bench/out/corpus"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/ingest-data"))
    parser.add_argument("--commit-every", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    paths = generate(args.corpus, args.docs)
    shutil.rmtree(args.out, ignore_errors=True)
    kb = make_kb(args.out)
    emb = get_embedder(kb.settings.default_embedder)
    emb.embed_passages(["warm-up"])  # model load is start-up, not ingestion
    kb.store.create_collection("bench", None, emb.name, emb.fingerprint, emb.dim)

    read_seconds = 0.0

    def sources():
        nonlocal read_seconds
        for p in paths:
            t = time.perf_counter()
            data = p.read_bytes()
            read_seconds += time.perf_counter() - t
            yield SourceFile(data, str(p.name), p.name)

    kinds: Counter[str] = Counter(p.suffix.lstrip(".") for p in paths)
    start = time.perf_counter()
    chunks = failed = 0
    for outcome in kb.pipeline.ingest("bench", sources(), commit_every=args.commit_every):
        if outcome.error:
            failed += 1
        else:
            chunks += outcome.result.chunks
    wall = time.perf_counter() - start
    stages = dict(kb.pipeline.timer.seconds)
    stages["read files"] = read_seconds
    stages["other"] = max(0.0, wall - sum(stages.values()))
    kb.close()

    print(f"Ingestion of {len(paths)} documents ({dict(kinds)}); {machine()}; commit {git_rev()}")
    print(
        table(
            ["documents", "chunks", "failed", "wall s", "docs/s", "chunks/s"],
            [[len(paths), chunks, failed, f"{wall:.1f}", f"{len(paths) / wall:.2f}", f"{chunks / wall:.1f}"]],
        )
    )
    order = ["read files", "dedup", "parse", "chunk", "embed", "index", "other"]
    rows = [[k, f"{stages.get(k, 0):.1f}", f"{100 * stages.get(k, 0) / wall:.1f}%"] for k in order]
    print(table(["stage", "seconds", "share of wall"], rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"docs": len(paths), "chunks": chunks, "failed": failed, "wall": wall, "stages": stages}
            )
        )


if __name__ == "__main__":
    main()
