"""Real `kb serve` and `kb worker` subprocesses for the crash test, and the bookkeeping of what the
server acknowledged, so the test can say afterwards what must still be there."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

KB_BIN = Path(sys.executable).with_name("kb")


@dataclass
class Proc:
    """One kb subprocess in its own process group (a SIGKILL reaches its children too)."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            [str(KB_BIN), *self.argv],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def sigkill(self) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def children(self) -> list[psutil.Process]:
        """Direct children: for `kb worker`, the Celery pool processes (not their parser forkserver)."""
        assert self.popen is not None
        try:
            return psutil.Process(self.popen.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []


def wait_http(base: str, proc: Proc, timeout: float = 180.0) -> float:
    """Seconds until `GET /healthz` answers (uvicorn answers only after the start-up sync ran)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.alive(), proc.log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"kb serve not ready after {timeout} s")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Uploads:
    """Every upload attempted, per source id and in order; acknowledged = the server answered 2xx."""

    attempts: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # content digest -> its unique search token
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: int = 0
    cut: int = 0  # requests that got no answer: the server died under them

    def record(self, source_id: str, digest: str, acked: bool, token: str) -> None:
        with self.lock:
            self.tokens[digest] = token
            self.attempts.setdefault(source_id, []).append((digest, acked))
            self.acked += acked
            self.cut += not acked

    def allowed(self, source_id: str) -> set[str] | None:
        """Contents the DB may hold for `source_id`: the last acknowledged one, or any attempt after it
        (a request cut by the kill may have committed before the process died). None: any or none."""
        history = self.attempts.get(source_id, [])
        last = max((i for i, (_, ok) in enumerate(history) if ok), default=None)
        if last is None:
            return None
        return {digest for digest, _ in history[last:]}


class Uploader(threading.Thread):
    """Uploads small notes one after the other until the server stops answering (it was killed)."""

    TOPICS = ("boiler", "crane", "valve", "ladder", "permit", "drill", "helmet", "fuse")

    def __init__(self, base: str, collection: str, uploads: Uploads, start_at: int, sources: int) -> None:
        super().__init__(daemon=True)
        self.base, self.collection, self.uploads = base, collection, uploads
        self.n, self.sources = start_at, sources

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while True:
                i = self.n
                self.n += 1
                topic = self.TOPICS[i % len(self.TOPICS)]
                text = (
                    f"# {topic.title()} note {i}\n\nThe {topic} check number {i} uses token zq{i}x. "
                    f"It is done every {i % 9 + 2} days by crew {i % 5}."
                )
                source_id = f"note-{i % self.sources}"
                try:
                    r = client.post(
                        f"/v1/collections/{self.collection}/documents",
                        json={"text": text, "source_id": source_id},
                    )
                except httpx.HTTPError:
                    self.uploads.record(source_id, sha(text), False, f"zq{i}x")
                    return
                assert r.status_code == 201, r.text
                self.uploads.record(source_id, sha(text), True, f"zq{i}x")


def make_notes_dump(root: Path, label: str, n: int) -> list[str]:
    """A folder of `n` distinct markdown files for a batch job; returns their relative paths."""
    root.mkdir(parents=True)
    paths = []
    for i in range(n):
        rel = f"part{i % 3}/{label}-{i}.md"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {label} {i}\n\nProcedure {label}-{i}: isolate circuit {i * 3} first.\n")
        paths.append(rel)
    return paths
