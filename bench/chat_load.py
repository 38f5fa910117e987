"""Chat under load: N concurrent sessions x T turns against a real `kb serve`, KV reuse on and off.

    .venv/bin/python -m bench.chat_load --sessions 16 --turns 5 --out bench/out

One invocation ingests FAQ answers (zaragoza-construction-faq) into a throwaway data dir, then starts
`kb serve` twice on it: with the engine's prefix cache (KV reuse) and without
(`KB_ENGINE_PREFIX_CACHE=false`: every prompt is prefilled in full). Each session asks FAQ questions over
the streaming sessions API; TTFT is measured by the client (request sent -> first `delta` event), so it
includes retrieval and queueing behind the other sessions. Prints a table, writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import git_rev, machine, make_kb, table, wait_ready

COLLECTION = "faq"


def ingest(data_dir: Path, docs: int) -> list[str]:
    """FAQ answers become the documents; their questions (in order) become the users' turns."""
    import zaragoza_construction_faq as faq

    from ingest.embedders.factory import get_embedder
    from ingest.pipeline import SourceFile

    items = faq.load(lang="en")[:docs]
    kb = make_kb(data_dir)
    try:
        emb = get_embedder("minilm")
        kb.store.create_collection(COLLECTION, None, "minilm", emb.fingerprint, emb.dim)
        sources = [SourceFile(it["a"].encode(), it["id"]) for it in items]
        outcomes = list(kb.pipeline.ingest(COLLECTION, sources, commit_every=64))
        assert all(o.error is None for o in outcomes)
    finally:
        kb.close()
    return [it["q"] for it in items]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, reuse: bool, args: argparse.Namespace) -> subprocess.Popen:
    env = {
        **os.environ,
        "KB_DATA_DIR": str(data_dir),
        "KB_GENERATOR": "engine",
        "KB_ENGINE_DEVICE": args.device,
        "KB_ENGINE_PREFIX_CACHE": "true" if reuse else "false",
        "KB_ENGINE_DISK_CACHE": "false",  # measure the in-memory prefix cache alone
        "KB_ENGINE_CPU_CACHE_GB": "0",
        "KB_CHAT_REWRITE": "heuristic",  # keep a rewrite generation out of TTFT (see RESULTS.md)
        "KB_CHAT_TOP_K": str(args.top_k),
        "KB_CHAT_CONTEXT_TOKENS": str(args.context_tokens),
        "KB_CHAT_MAX_TOKENS": str(args.max_tokens),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    log = open(data_dir / f"serve-{'reuse' if reuse else 'noreuse'}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def one_turn(client: httpx.AsyncClient, sid: str, content: str) -> dict[str, Any]:
    started = time.perf_counter()
    ttft = None
    usage: dict[str, Any] = {}
    event = None
    async with client.stream(
        "POST", f"/v1/chat/sessions/{sid}/messages", json={"content": content, "stream": True}
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "delta" and ttft is None:
                    ttft = (time.perf_counter() - started) * 1000
                elif event == "usage":
                    usage = json.loads(line[6:])
                elif event == "error":
                    raise RuntimeError(line)
    return {"ttft_ms": ttft, "total_ms": (time.perf_counter() - started) * 1000, **usage}


async def session(client: httpx.AsyncClient, questions: list[str]) -> list[dict[str, Any]]:
    r = await client.post("/v1/chat/sessions", json={"collection": COLLECTION})
    r.raise_for_status()
    sid = r.json()["id"]
    return [await one_turn(client, sid, q) for q in questions]


async def run_phase(base: str, questions: list[list[str]]) -> tuple[list[list[dict[str, Any]]], float]:
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        await session(client, ["What does the FAQ cover?"])  # warm-up: first-call overheads
        started = time.perf_counter()
        results = await asyncio.gather(*(session(client, qs) for qs in questions))
        return list(results), time.perf_counter() - started


def summarize(results: list[list[dict[str, Any]]], wall_s: float, turns: int) -> dict[str, Any]:
    per_turn = []
    for t in range(turns):
        rows = [s[t] for s in results]
        ttft = np.array([r["ttft_ms"] for r in rows], dtype=float)
        per_turn.append(
            {
                "turn": t + 1,
                "ttft_p50_ms": float(np.percentile(ttft, 50)),
                "ttft_p99_ms": float(np.percentile(ttft, 99)),
                "prompt_tokens": float(np.mean([r["prompt_tokens"] for r in rows])),
                "cached_tokens": float(np.mean([r["cached_tokens"] for r in rows])),
            }
        )
    completion = sum(r["completion_tokens"] for s in results for r in s)
    prompt = sum(r["prompt_tokens"] - r["cached_tokens"] for s in results for r in s)
    return {
        "per_turn": per_turn,
        "wall_s": wall_s,
        "turns_per_s": len(results) * turns / wall_s,
        "completion_tok_per_s": completion / wall_s,
        "prefilled_tokens": prompt,
    }


def comparison_table(summary: dict[str, Any]) -> str:
    """TTFT per turn with reuse on and off, side by side (also used by bench/chat_gpu.py)."""
    rows = []
    for r_on, r_off in zip(summary["reuse"]["per_turn"], summary["no_reuse"]["per_turn"], strict=True):
        rows.append(
            [
                r_on["turn"],
                f"{r_on['prompt_tokens']:.0f}",
                f"{r_on['cached_tokens']:.0f}",
                f"{r_on['ttft_p50_ms']:.0f}",
                f"{r_on['ttft_p99_ms']:.0f}",
                f"{r_off['ttft_p50_ms']:.0f}",
                f"{r_off['ttft_p99_ms']:.0f}",
                f"{r_on['ttft_p99_ms'] / r_off['ttft_p99_ms']:.2f}",
            ]
        )
    headers = [
        "turn",
        "prompt tok (mean)",
        "cached tok (mean, reuse)",
        "TTFT p50 reuse ms",
        "TTFT p99 reuse ms",
        "TTFT p50 no reuse ms",
        "TTFT p99 no reuse ms",
        "p99 reuse / no reuse",
    ]
    return table(headers, rows)


def plot(summary: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, style in (("reuse", "-"), ("no_reuse", "--")):
        rows = summary[name]["per_turn"]
        turns = [r["turn"] for r in rows]
        ax.plot(turns, [r["ttft_p50_ms"] / 1000 for r in rows], style, marker="o", label=f"{name} p50")
        ax.plot(turns, [r["ttft_p99_ms"] / 1000 for r in rows], style, marker="^", label=f"{name} p99")
    ax.set_xlabel("turn")
    ax.set_ylabel("TTFT (s)")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(turns)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--context-tokens", type=int, default=160)
    parser.add_argument("--device", default="cpu", help="KB_ENGINE_DEVICE (the model: KB_GENERATOR_MODEL)")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        t0 = time.perf_counter()
        qs = ingest(data_dir, args.docs)
        print(f"ingested {len(qs)} FAQ answers in {time.perf_counter() - t0:.1f} s", flush=True)
        need = args.sessions * args.turns
        questions = [
            [qs[(s * args.turns + t) % len(qs)] for t in range(args.turns)] for s in range(args.sessions)
        ]
        assert need <= len(qs)
        summary: dict[str, Any] = {}
        for name, reuse in (("reuse", True), ("no_reuse", False)):
            port = free_port()
            proc = start_server(data_dir, port, reuse, args)
            try:
                base = f"http://127.0.0.1:{port}"
                t0 = time.perf_counter()
                wait_ready(base, proc)
                print(f"{name}: kb serve ready in {time.perf_counter() - t0:.1f} s", flush=True)
                results, wall = asyncio.run(run_phase(base, questions))
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            summary[name] = summarize(results, wall, args.turns)
            summary[name]["raw"] = results
            print(f"{name}: {wall:.1f} s", flush=True)

    print(comparison_table(summary))
    for name in ("reuse", "no_reuse"):
        s = summary[name]
        print(
            f"{name}: wall {s['wall_s']:.1f} s, {s['turns_per_s']:.2f} turns/s, "
            f"{s['completion_tok_per_s']:.1f} completion tok/s, {s['prefilled_tokens']} tokens prefilled"
        )
    meta = {"machine": machine(), "git": git_rev(), "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "chat_load.json").write_text(json.dumps({"meta": meta, **summary}, indent=1))
    title = f"{args.sessions} sessions x {args.turns} turns, SmolLM2-135M on CPU ({machine().split(',')[0]})"
    plot(summary, args.out / "chat_load_ttft.png", title)
    print(f"wrote {args.out / 'chat_load.json'} and {args.out / 'chat_load_ttft.png'}")


if __name__ == "__main__":
    main()
