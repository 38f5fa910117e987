"""`kb serve` for real (uvicorn, a port, its own process) with KB_AUTH=required: keys over HTTP, request
ids echoed, and stderr as JSON lines that carry the request id and the key's prefix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

KB = str(Path(sys.executable).parent / "kb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kb_serve_with_keys_and_json_logs(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KB_DATA_DIR": str(tmp_path / "data"),
        "KB_AUTH": "required",
        "KB_GENERATOR": "fake",
        "KB_GENERATOR_PRELOAD": "false",
        "KB_RATE_LIMIT": "off",
    }
    env.pop("KB_DATABASE_URL", None)
    made = subprocess.run(
        [KB, "keys", "create", "--admin", "--json"], env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    port = _free_port()
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([KB, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        denied = httpx.get(f"{base}/v1/collections")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
        ok = httpx.get(
            f"{base}/v1/collections", headers={"authorization": f"Bearer {key}", "x-request-id": "e2e-1"}
        )
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "e2e-1"
        assert "kb_http_request_duration_seconds_bucket" in httpx.get(f"{base}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = Path(log.name).read_text().splitlines()
    records = [json.loads(x) for x in lines if x.startswith("{")]
    access = next(r for r in records if r.get("request_id") == "e2e-1")
    assert access["logger"] == "kb.access" and access["status"] == 200 and access["key"] == key[:10]
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own lines are JSON too
    assert key not in Path(log.name).read_text()  # the key itself is never logged
