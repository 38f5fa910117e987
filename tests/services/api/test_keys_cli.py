"""`kb keys create|list|revoke` through the real CLI and database; the key works against the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.api.auth import authenticate
from services.cli import app
from services.core.config import get_settings
from storage.db import Database


@pytest.fixture
def env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KB_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def test_create_list_revoke(env: str) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--admin", "--name", "ops"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("kb_") and len(key) > 40
    db = Database(env)
    try:
        principal = authenticate(db, key)
        assert principal is not None and principal.admin
        listed = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
        assert [(k["name"], k["prefix"], k["scopes"]) for k in listed] == [("ops", key[:10], ["admin"])]
        assert key not in runner.invoke(app, ["keys", "list"]).stdout  # never shown again
        revoked = runner.invoke(app, ["keys", "revoke", str(listed[0]["id"])])
        assert revoked.exit_code == 0 and authenticate(db, key) is None
        assert json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout) == []
        assert len(json.loads(runner.invoke(app, ["keys", "list", "--all", "--json"]).stdout)) == 1
    finally:
        db.dispose()


def test_bad_requests_exit_2_with_the_reason(env: str) -> None:
    runner = CliRunner()
    for args, reason in (
        (["keys", "create", "-c", "nosuch", "--scopes", "search"], "collection 'nosuch' not found"),
        (["keys", "create", "--scopes", "search"], "--collection"),
        (["keys", "revoke", "kb_nothing"], "no API key matches"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and reason in result.output, (args, result.output)
