"""The real packaged embedders, loaded once per test session (factory-cached)."""

from __future__ import annotations

import pytest

from ingest.embedders.e5 import E5MultilingualEmbedder
from ingest.embedders.factory import get_embedder
from ingest.embedders.minilm import MiniLMEmbedder


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    embedder = get_embedder("minilm")
    assert isinstance(embedder, MiniLMEmbedder)
    return embedder


@pytest.fixture(scope="session")
def e5() -> E5MultilingualEmbedder:
    embedder = get_embedder("e5-multilingual")
    assert isinstance(embedder, E5MultilingualEmbedder)
    return embedder
