"""Pick an embedder by name; each model is loaded once per process, on first use."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ingest.embedders.base import Embedder

DEFAULT_EMBEDDER = "minilm"


def _minilm() -> Embedder:
    from ingest.embedders.minilm import MiniLMEmbedder

    return MiniLMEmbedder()


def _e5() -> Embedder:
    from ingest.embedders.e5 import E5MultilingualEmbedder

    return E5MultilingualEmbedder()


_BUILDERS: dict[str, Callable[[], Embedder]] = {"minilm": _minilm, "e5-multilingual": _e5}
EMBEDDER_NAMES: tuple[str, ...] = tuple(_BUILDERS)

_cache: dict[str, Embedder] = {}
_lock = threading.Lock()


def get_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """The process-wide embedder called `name` ("minilm" or "e5-multilingual").

    Thread-safe: concurrent first calls load the model once. Raises ValueError for an
    unknown name, listing the valid ones.
    """
    embedder = _cache.get(name)
    if embedder is not None:
        return embedder
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown embedder {name!r}; valid names: {', '.join(EMBEDDER_NAMES)}")
    with _lock:
        embedder = _cache.get(name)
        if embedder is None:
            embedder = builder()
            _cache[name] = embedder
    return embedder
