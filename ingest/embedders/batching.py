"""Micro-batching of concurrent query embeddings.

A search request embeds one short query; on CPU one forward pass of a batch of 8
queries costs ~1.5x a single one (MiniLM on 2 cores: 9.2 ms vs 6.0 ms), because a
15-token pass is all overhead. So concurrent searches hand their query to one
worker thread, which embeds whatever has queued up in a single pass. An idle
server adds no delay: the worker starts as soon as the first query arrives.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np


class QueryBatcher:
    def __init__(self, embed_many: Callable[[list[str]], np.ndarray], max_batch: int = 32) -> None:
        self._embed_many = embed_many
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[str, Future[np.ndarray]]] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name="query-embedder", daemon=True)
        self._worker.start()

    def embed(self, text: str) -> np.ndarray:
        future: Future[np.ndarray] = Future()
        self._queue.put((text, future))
        return future.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                vectors = self._embed_many([text for text, _ in batch])
            except BaseException as exc:  # hand the failure to every waiting caller
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                future.set_result(vector)
