"""Real `kb serve` subprocesses (fake generator, temp SQLite) and Debian's chromium, for the browser tests.

Two servers start side by side, one with KB_AUTH=required (the full flow, with a key) and one with
auth off (no key at all), so their start-up overlaps. Chromium is the system one: nothing is
downloaded (never `playwright install`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Server:
    base: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path
    key: str | None = None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root: Path, auth: str) -> Server:
    data = root / f"data-{auth}"
    data.mkdir(parents=True)
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "KB_DATA_DIR": str(data),
        "KB_DATABASE_URL": "",
        "KB_GENERATOR": "fake",
        "KB_INGEST_RUNNER": "inprocess",
        "KB_AUTH": auth,
    }
    log = root / f"serve-{auth}.log"
    kb = Path(sys.executable).with_name("kb")
    cmd = [str(kb), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return Server(f"http://127.0.0.1:{port}/", data, proc, log)


def _wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"kb serve exited with {server.proc.returncode}:\n{server.tail()}")
        try:
            if httpx.get(f"{server.base}readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"kb serve did not become ready:\n{server.tail()}")


def _admin_key(server: Server) -> str:
    """Created in the server's own database, the way `kb keys create --admin` does."""
    from services.api.auth import create_key
    from storage.db import Database

    db = Database(f"sqlite:///{(server.data_dir / 'kb.sqlite3').resolve()}")
    try:
        raw, _ = create_key(db, None, [], admin=True, name="web-ui-test")
    finally:
        db.engine.dispose()
    return raw


@pytest.fixture(scope="package")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    root = tmp_path_factory.mktemp("web")
    started = {auth: _start(root, auth) for auth in ("required", "off")}
    try:
        for server in started.values():
            _wait_ready(server)
        started["required"].key = _admin_key(started["required"])
        yield started
    finally:
        for server in started.values():
            server.proc.terminate()
        for server in started.values():
            try:
                server.proc.wait(15)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does it)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
