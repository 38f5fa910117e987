"""Retrieval quality on the zaragoza-construction-faq set (503 Q&A pairs, CC-BY-4.0).

Corpus = the answers, queries = the questions, the one relevant document = the
answer with the same id. Reports nDCG@10, recall@5 and MRR@10 for dense, lexical
and hybrid search through kb's own stack (chunker, embedder, FAISS, tantivy,
fusion), plus the fusion variants tried.

    .venv/bin/python -m bench.quality [--embedder minilm]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import zaragoza_construction_faq as faq

from bench.common import machine, make_kb, table
from ingest.pipeline import SourceFile
from services.search.fusion import FusionParams


def metrics(ranked_sources: list[list[str]], relevant: list[str]) -> dict[str, float]:
    ndcg = recall5 = mrr = 0.0
    for ranked, rel in zip(ranked_sources, relevant, strict=True):
        # Several chunks of one answer may be returned: rank documents by first appearance.
        seen: list[str] = []
        for s in ranked:
            if s not in seen:
                seen.append(s)
        if rel in seen[:10]:
            rank = seen.index(rel) + 1
            ndcg += 1 / math.log2(rank + 1)
            mrr += 1 / rank
            recall5 += rank <= 5
    n = len(relevant)
    return {"ndcg@10": ndcg / n, "recall@5": recall5 / n, "mrr@10": mrr / n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--json", type=Path, help="Write all figures here too.")
    args = parser.parse_args()

    items = faq.load(lang="en")
    with tempfile.TemporaryDirectory() as tmp:
        kb = make_kb(Path(tmp))
        from ingest.embedders.factory import get_embedder

        emb = get_embedder(args.embedder)
        kb.store.create_collection("faq", None, args.embedder, emb.fingerprint, emb.dim)
        sources = [SourceFile(it["a"].encode(), it["id"]) for it in items]
        outcomes = list(kb.pipeline.ingest("faq", sources, commit_every=64))
        assert all(o.error is None for o in outcomes), [o.error for o in outcomes if o.error]
        queries = [it["q"] for it in items]
        relevant = [it["id"] for it in items]

        def run(mode: str, fusion: FusionParams | None = None) -> dict[str, float]:
            if fusion is not None:
                kb.searcher.fusion = fusion
            ranked = [
                [h.source_id for h in kb.searcher.search("faq", q, top_k=10, mode=mode)] for q in queries
            ]
            return metrics(ranked, relevant)

        results: dict[str, dict[str, float]] = {
            "dense": run("dense"),
            "lexical": run("lexical"),
            "hybrid (z-score, dense 1 : lexical 0.25) [default]": run("hybrid", FusionParams()),
        }
        variants = {
            "hybrid (rrf k=60, 1:1)": FusionParams("rrf", 60, 1.0, 1.0),
            "hybrid (rrf k=10, dense 4 : lexical 1)": FusionParams("rrf", 10, 4.0, 1.0),
            "hybrid (z-score, 1:0.5)": FusionParams("zscore", 60, 1.0, 0.5),
            "hybrid (z-score, 1:1)": FusionParams("zscore", 60, 1.0, 1.0),
            "hybrid (rrf k=60, dense 1.5 : lexical 1)": FusionParams("rrf", 60, 1.5, 1.0),
            "hybrid (rrf k=60, dense 1 : lexical 1.5)": FusionParams("rrf", 60, 1.0, 1.5),
            "hybrid (rrf k=20, 1:1)": FusionParams("rrf", 20, 1.0, 1.0),
            "hybrid (weighted min-max, 1:1)": FusionParams("weighted", 60, 1.0, 1.0),
            "hybrid (weighted min-max, dense 0.7 : lexical 0.3)": FusionParams("weighted", 60, 0.7, 0.3),
        }
        for label, fusion in variants.items():
            results[label] = run("hybrid", fusion)
        kb.close()

    rows = [
        [name, f"{m['ndcg@10']:.3f}", f"{m['recall@5']:.3f}", f"{m['mrr@10']:.3f}"]
        for name, m in results.items()
    ]
    print(f"FAQ retrieval quality, {len(items)} queries, embedder {args.embedder}; {machine()}")
    print(table(["mode", "nDCG@10", "recall@5", "MRR@10"], rows))
    gain = (
        results["hybrid (z-score, dense 1 : lexical 0.25) [default]"]["ndcg@10"] - results["dense"]["ndcg@10"]
    )
    print(f"hybrid - dense nDCG@10: {gain * 100:+.1f} points (goal: >= +2)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
