"""The one interface every embedding model in kb sits behind.

A collection stores `Embedder.fingerprint` next to its vectors, so search can refuse
to mix vectors from different models (or different weights of the "same" model).
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ingest.embedders.batching import QueryBatcher


class Embedder(ABC):
    """Text -> L2-normalised float32 vectors, plus the model's own token counter.

    Subclasses set `name`, `dim` and `max_tokens` and implement the four methods.
    `max_tokens` is the model's hard input limit *including* special tokens and any
    passage prefix; `count_tokens` counts exactly that way, so a text `t` with
    `count_tokens([t])[0] <= max_tokens` is embedded whole, never truncated.
    """

    name: str
    dim: int
    max_tokens: int

    def __init__(self) -> None:
        self._fingerprint: str | None = None
        self._fingerprint_lock = threading.Lock()
        self._batcher: QueryBatcher | None = None

    @abstractmethod
    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens the model would see for each text embedded as a passage (untruncated)."""

    @abstractmethod
    def embed_passages(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed documents: float32 array of shape (len(texts), dim), rows L2-normalised."""

    @abstractmethod
    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Embed search queries (query prefix if the model wants one): (len(texts), dim), L2-normalised."""

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one search query: float32 array of shape (dim,), L2-normalised.

        Goes through a per-model QueryBatcher, so concurrent searches share forward passes.
        """
        if self._batcher is None:
            with self._fingerprint_lock:
                if self._batcher is None:
                    self._batcher = QueryBatcher(self.embed_queries)
        return self._batcher.embed(text)

    @abstractmethod
    def _identity_files(self) -> Iterable[Path]:
        """Files whose bytes define the model (weights, tokenizer, configs)."""

    @property
    def fingerprint(self) -> str:
        """`<name>:<dim>:<sha256 prefix of the model files>`, stable across processes.

        Two embedders produce comparable vectors iff their fingerprints are equal.
        Hashing ~100 MB takes a fraction of a second and happens once per instance.
        """
        if self._fingerprint is None:
            with self._fingerprint_lock:
                if self._fingerprint is None:
                    self._fingerprint = f"{self.name}:{self.dim}:sha256-{hash_files(self._identity_files())}"
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, max_tokens={self.max_tokens})"


def hash_files(paths: Iterable[Path]) -> str:
    """sha256 over (file name, size, content) of each file, in a stable order; first 16 hex digits."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32; all-zero rows stay zero instead of becoming NaN."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return np.ascontiguousarray(v / norms, dtype=np.float32)
