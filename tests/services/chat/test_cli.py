"""`kb engine-serve` is a command of the kb CLI."""

from __future__ import annotations

from typer.testing import CliRunner

from services.cli import app


def test_engine_serve_command_is_registered() -> None:
    result = CliRunner().invoke(app, ["engine-serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "OpenAI-compatible" in result.output and "--port" in result.output
