from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ingest.embedders.batching import QueryBatcher


def test_concurrent_queries_share_passes_and_get_their_own_vector() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def embed_many(texts: list[str]) -> np.ndarray:
        gate.wait(5)  # hold the first pass so the others queue up behind it
        sizes.append(len(texts))
        return np.array([[float(t.removeprefix("q"))] for t in texts], dtype=np.float32)

    batcher = QueryBatcher(embed_many, max_batch=32)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(batcher.embed, f"q{i}") for i in range(16)]
        time.sleep(0.2)
        gate.set()
        results = [f.result(5) for f in futures]
    assert [float(r[0]) for r in results] == [float(i) for i in range(16)]
    assert sum(sizes) == 16 and len(sizes) < 16 and max(sizes) > 1


def test_a_failing_pass_fails_its_callers_and_the_batcher_keeps_working() -> None:
    def embed_many(texts: list[str]) -> np.ndarray:
        if "bad" in texts:
            raise RuntimeError("model exploded")
        return np.ones((len(texts), 2), dtype=np.float32)

    batcher = QueryBatcher(embed_many)
    with pytest.raises(RuntimeError, match="exploded"):
        batcher.embed("bad")
    assert batcher.embed("good").shape == (2,)


def test_real_model_batched_queries_match_single_ones(minilm) -> None:  # noqa: ANN001
    queries = [f"how do I reset password number {i}" for i in range(8)]
    single = np.stack([minilm.embed_queries([q])[0] for q in queries])
    with ThreadPoolExecutor(8) as pool:
        batched = np.stack(list(pool.map(minilm.embed_query, queries)))
    assert np.all(np.sum(single * batched, axis=1) > 0.999)
