"""compose.yaml and the Dockerfile against the code: no Docker engine runs here (nor in CI), so this
checks what would break a deployment silently: a renamed command, a misspelt KB_* setting, a value the
settings reject, a service started before its dependencies, a package left out of the image."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml

from services.cli import app
from services.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
KB_SERVICES = [name for name, svc in SERVICES.items() if "build" in svc]


def _cli_commands() -> set[str]:
    return set(typer.main.get_command(app).commands)


def test_roles_are_present_and_use_real_commands() -> None:
    assert {"api", "worker", "engine", "migrate", "postgres", "redis"} <= set(SERVICES)
    commands = _cli_commands()
    for name in KB_SERVICES:
        command = SERVICES[name]["command"]
        assert command[0] == "kb" and command[1] in commands, (name, command)


@pytest.mark.parametrize("name", KB_SERVICES)
def test_environment_is_valid_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = SERVICES[name].get("environment", {})
    fields = {f"KB_{f.upper()}" for f in Settings.model_fields}
    unknown = {k for k in env if k.startswith("KB_")} - fields
    assert not unknown, f"{name}: settings that do not exist: {unknown}"
    for key in list(fields):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    Settings()  # raises on a value the settings reject


def test_api_and_workers_start_after_migrations_and_healthy_services() -> None:
    for name in ("api", "worker"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "engine", "api"):
        assert "healthcheck" in SERVICES[name], name
    # api and workers share index files and upload staging
    assert set(SERVICES["api"]["volumes"]) == set(SERVICES["worker"]["volumes"])
    assert SERVICES["api"]["environment"]["KB_GENERATOR_URL"].startswith("http://engine:")


def test_dockerfile_copies_every_package_the_code_imports() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile, re.M))
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests", "bench"}
    packages |= {"migrations"}
    assert packages <= copied, packages - copied
