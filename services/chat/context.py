"""Retrieval for a turn: hybrid search, a relevance floor, and passages chosen within a token budget.

Hybrid scores are z-scores per query (services/search/fusion.py), so they rank well but say nothing about
whether anything relevant exists: the best hit of an off-topic question still scores high. The floor is
therefore applied to each hit's dense cosine similarity, from a second, dense-only search (one more query
embedding and FAISS lookup, a few ms). Cosines depend on the embedder, hence per-embedder defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.chat.prompt import Passage

if TYPE_CHECKING:  # the engine box serves chat without the search stack (faiss, tantivy, parsers)
    from services.chat.generators.base import Generator
    from services.search.hybrid import HybridSearcher

# Starting points, not tuned: MiniLM scores off-topic questions against the tests' documents below 0.3 and
# on-topic ones above; e5 scores unrelated text ~0.7 (NOTES.md), hence 0.8. Tune with KB_CHAT_MIN_SCORE.
DEFAULT_MIN_SCORE = {"minilm": 0.3, "e5-multilingual": 0.8}


def min_score_for(embedder: str, configured: float | None) -> float:
    if configured is not None:
        return configured
    return DEFAULT_MIN_SCORE.get(embedder, 0.3)


@dataclass(slots=True)
class Retrieved:
    passages: list[Passage]  # relevant hits, best first (numbers not assigned yet)
    below_threshold: int  # hits dropped by the floor
    retrieval_ms: float


def retrieve(
    searcher: HybridSearcher,
    collection: str,
    queries: list[str],
    top_k: int,
    min_score: float,
    filter: dict[str, Any] | None = None,
) -> Retrieved:
    """Hybrid candidates for each query (the rewritten one and the question as asked), ranked by the
    best dense cosine any query gives them. Searching both keeps a topic switch that the rewrite
    wrongly merged with the previous topic ("From which warehouse do orders ship?") finding its own
    passages, while a real follow-up ("Does it cover falls?") is found through the rewrite."""
    started = time.perf_counter()
    best: dict[int, tuple[float, Any]] = {}
    seen = 0
    for query in dict.fromkeys(q for q in queries if q.strip()):
        hits = searcher.search(collection, query, top_k=top_k, mode="hybrid", filter=filter)
        dense = searcher.search(collection, query, top_k=max(top_k * 5, 20), mode="dense", filter=filter)
        cosine = {h.chunk_id: h.score for h in dense}
        for h in hits:
            seen += h.chunk_id not in best
            score = cosine.get(h.chunk_id, float("-inf"))
            if h.chunk_id not in best or score > best[h.chunk_id][0]:
                best[h.chunk_id] = (score, h)
    ranked = sorted(best.values(), key=lambda sh: -sh[0])[:top_k]
    passages = [
        Passage(0, h.chunk_id, h.document_id, h.source_id, h.title, h.page, list(h.heading), h.text, score)
        for score, h in ranked
        if score >= min_score
    ]
    return Retrieved(passages, seen - len(passages), (time.perf_counter() - started) * 1000)


def select_within_budget(
    passages: list[Passage], budget_tokens: int, count_text: Callable[[str], int]
) -> list[Passage]:
    """Best-first until the budget is spent; the best passage is always kept (cut to the budget)."""
    chosen: list[Passage] = []
    used = 0
    for p in passages:
        n = count_text(p.text) + 12  # number, label and separators
        if used + n > budget_tokens:
            if not chosen:
                keep = max(1, len(p.text) * budget_tokens // max(n, 1))
                p.text = p.text[:keep]
                chosen.append(p)
            continue
        chosen.append(p)
        used += n
    return chosen


def count_text_with(generator: Generator) -> Callable[[str], int]:
    """Tokens a passage adds inside a user message (the template's own tokens subtracted)."""
    base = generator.count_tokens([{"role": "user", "content": ""}])
    return lambda text: max(1, generator.count_tokens([{"role": "user", "content": text}]) - base)
