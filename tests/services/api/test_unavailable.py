"""PostgreSQL or Redis down: a 503 that says which, and the same app serves again once it is back.

Real servers: PostgreSQL reached through a TCP proxy that the test cuts (the shared server keeps
running), and a private redis-server on a free port that the test kills and starts again.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from services.api.app import create_app
from services.core.config import Settings
from services.core.container import build_kb
from tests.services.api.tcp_proxy import TcpProxy, free_port
from tests.services.jobs.helpers import make_dump

DOC = "# Boilers\n\nThe boiler pressure is checked every morning before the shift starts."


@pytest.fixture
def make_client_at(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """A real kb app on any database URL (the shared `make_client` fixes the URL itself)."""
    clients: list[TestClient] = []

    def factory(database_url: str, **overrides: object) -> TestClient:
        settings = Settings(data_dir=tmp_path / "data", database_url=database_url, **overrides)
        client = TestClient(create_app(kb=build_kb(settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)
        client.app.state.kb.close()


@pytest.fixture
def pg_proxy(pg_database: str) -> Iterator[tuple[TcpProxy, str]]:
    url = make_url(pg_database)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proxy.stop()


@pytest.mark.postgres
def test_postgres_down_is_503_and_recovers_without_restart(
    pg_proxy: tuple[TcpProxy, str], make_client_at: Callable[..., TestClient]
) -> None:
    proxy, url = pg_proxy
    client = make_client_at(url)
    assert client.post("/v1/collections", json={"name": "plant"}).status_code == 201
    r = client.post("/v1/collections/plant/documents", json={"text": DOC, "source_id": "boilers"})
    assert r.status_code == 201, r.text

    proxy.stop()
    for method, path, body in [
        ("GET", "/v1/collections", None),
        ("GET", "/v1/collections/plant/documents", None),
        ("POST", "/v1/collections/plant/search", {"query": "boiler pressure"}),
        ("POST", "/v1/collections/plant/documents", {"text": "A new note about valves.", "source_id": "v"}),
        ("POST", "/v1/collections", {"name": "other"}),
    ]:
        r = client.request(method, path, json=body)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert r.json()["detail"].startswith("database unavailable: "), r.text
        assert r.headers["retry-after"] == "2"
        assert "postgres@" not in r.text  # no connection string leaks
    assert client.get("/readyz").status_code == 503

    proxy.start()
    deadline = time.monotonic() + 20
    while (r := client.get("/v1/collections")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.status_code == 200 and r.json()["collections"][0]["documents"] == 1, r.text
    hits = client.post("/v1/collections/plant/search", json={"query": "boiler pressure"}).json()
    assert "pressure" in hits["results"][0]["text"]
    r = client.post("/v1/collections/plant/documents", json={"text": "Valves are greased.", "source_id": "v"})
    assert r.status_code == 201, r.text
    assert client.get("/readyz").status_code == 200


def _redis_server(port: int, workdir: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is installed by scripts/services.sh"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("private redis-server did not start")


def test_redis_down_is_503_and_recovers_without_restart(
    make_client_at: Callable[..., TestClient], tmp_path: Path
) -> None:
    port = free_port()
    server = _redis_server(port, tmp_path)
    try:
        client = make_client_at(
            f"sqlite:///{tmp_path / 'kb.sqlite3'}",
            ingest_runner="celery",
            redis_url=f"redis://127.0.0.1:{port}/0",
            redis_prefix=f"kbtest-{port}:",
            ingest_allowed_roots=str(tmp_path),
        )
        dump = make_dump(tmp_path / "d", 2)
        assert client.post("/v1/collections", json={"name": "dump"}).status_code == 201
        path = "/v1/collections/dump/ingest-jobs"
        assert client.post(path, json={"path": str(dump.root)}).status_code == 202

        server.kill()
        server.wait()
        r = client.post(path, json={"path": str(dump.root)})
        assert r.status_code == 503 and r.json()["detail"].startswith("job queue unavailable: "), r.text
        assert client.get("/v1/collections/dump").status_code == 200  # what needs no Redis still works

        server = _redis_server(port, tmp_path)
        deadline = time.monotonic() + 20
        while (r := client.post(path, json={"path": str(dump.root)})).status_code != 202:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        assert redis.Redis(port=port).dbsize() > 0  # the new job's tasks are queued on the new server
    finally:
        server.kill()
        server.wait()
