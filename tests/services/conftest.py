"""A real kb (real embedder, FAISS, tantivy, database) behind FastAPI's TestClient."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.core.config import Settings
from services.core.container import KB, build_kb


@pytest.fixture
def make_kb(database_url: str, tmp_path: Path) -> Iterator[Callable[..., KB]]:
    """Builds a KB on this test's database and data dir; call again to simulate a restart."""
    built: list[KB] = []

    def factory(**overrides: object) -> KB:
        settings = Settings(data_dir=tmp_path / "data", database_url=database_url, **overrides)
        kb = build_kb(settings)
        built.append(kb)
        return kb

    yield factory
    for kb in built:
        kb.close()


@pytest.fixture
def make_client(make_kb: Callable[..., KB]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def factory(**overrides: object) -> TestClient:
        client = TestClient(create_app(kb=make_kb(**overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
