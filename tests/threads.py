"""How many OpenMP pool workers a thread keeps after running something, counted in a fresh process.

Why a fresh process: a pool lives as long as its thread, and the test runner's own threads already hold
some; `/proc/self/task` of a new interpreter shows exactly the workers one call leaves (engine/devices.py
says why a second pool slows the engine).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def _settled_tasks(timeout_s: float = 5.0) -> int:
    """The thread count once it has held still for 0.2 s: threads that ``fn`` joined (a passing thread and
    its pool's workers) leave /proc a little after the join returns."""
    deadline = time.monotonic() + timeout_s
    last, still = _tasks(), 0
    while still < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
        now = _tasks()
        still = still + 1 if now == last else 0
        last = now
    return last


def kept_pool_workers(fn: Callable[[], object]) -> int:
    """Threads beyond itself that a live thread keeps once ``fn`` has run in it; waits until they are gone."""
    ran, hold = threading.Event(), threading.Event()

    def live() -> None:
        fn()
        ran.set()
        hold.wait()

    base = _tasks()
    t = threading.Thread(target=live)
    t.start()
    ran.wait()
    kept = _settled_tasks() - base - 1
    hold.set()
    t.join()
    while _tasks() > base:
        time.sleep(0.01)
    return kept


def counts_in_fresh_process(code: str) -> list[int]:
    """Run ``code`` (which prints integers) in a new interpreter at the repository root."""
    prelude = "from tests.threads import kept_pool_workers\n"
    out = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return [int(v) for v in out.stdout.split()]
