"""Parser fixtures: generated once per test session into a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ingest.parsers.fixtures import write_all


@pytest.fixture(scope="session")
def docs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("parser-docs"))


@pytest.fixture
def load(docs: dict[str, Path]):  # noqa: ANN201 - returns a small loader function
    def _load(name: str) -> bytes:
        return docs[name].read_bytes()

    return _load
