"""`kb ingest`, `kb search`, `kb reindex` and `kb migrate` on a real data dir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.core.config import get_settings
from tests.services.api.docs import make_pdf


@pytest.fixture
def env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KB_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_ingest_folder_lists_failures_and_exits_1(env: Path) -> None:
    folder = env / "dump"
    (folder / "sub").mkdir(parents=True)
    (folder / "guide.md").write_text("# Setup\n\nPress the blue button twice to pair the headset.\n")
    (folder / "sub" / "manual.pdf").write_bytes(make_pdf(["Intro page.", "Battery lasts nine hours."]))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (folder / "blob.txt").write_bytes(bytes(range(256)) * 20)
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(folder), "--collection", "docs"])
    assert result.exit_code == 1, result.output
    assert "4 files: 2 new, 0 replaced, 0 duplicates, 2 failed" in result.output
    assert "broken.pdf" in result.output and "blob.txt" in result.output

    again = runner.invoke(app, ["ingest", str(folder / "guide.md"), "-c", "docs"])
    assert again.exit_code == 0 and "1 duplicates" in again.output

    found = runner.invoke(app, ["search", "how long does the battery last", "-c", "docs", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert hits[0]["page"] == 2 and "nine hours" in hits[0]["text"]

    reindexed = runner.invoke(app, ["reindex"])
    assert reindexed.exit_code == 0 and "docs:" in reindexed.output

    missing = runner.invoke(app, ["search", "x", "-c", "nope"])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_migrate_command(env: Path) -> None:
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 0 and "latest schema" in result.output
