"""The CLI: bench-turns in two processes sharing a data dir (restart reuse), and chat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from engine.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _bench(data_dir: Path, model_dir) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "engine.cli", "bench-turns", "--turns", "2", "--json"]
    cmd += ["--data-dir", str(data_dir), "--device", "cpu", "--model", str(model_dir), "--max-tokens", "16"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bench_turns_second_process_reuses_disk_tier(model_dir, tmp_path):
    first = _bench(tmp_path, model_dir)
    second = _bench(tmp_path, model_dir)
    assert [r["turn"] for r in first] == [1, 2]
    assert first[0]["cached_tokens"] == 0 and first[1]["cached_from"]["gpu"] > 0
    assert second[0]["cached_from"]["disk"] > 0
    assert [r["text"] for r in second] == [r["text"] for r in first]
    assert set(first[0]) >= {"turn", "prompt_tokens", "cached_tokens", "cached_from", "completion_tokens"}


def test_chat_command_streams_and_exits(model_dir, tmp_path):
    res = CliRunner().invoke(
        app,
        ["chat", "--model", str(model_dir), "--device", "cpu", "--data-dir", str(tmp_path)]
        + ["--max-tokens", "8"],
        input="Hello!\nWhat did I say?\n/exit\n",
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("bot> ") == 2 and "cached" in res.output
