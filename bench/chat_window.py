"""What the context-window policy costs in KV reuse: one long session through a small window.

    .venv/bin/python -m bench.chat_window --window 1024 --turns 10

In-process (real engine with SmolLM2 on CPU, real retrieval over FAQ answers). Per turn it prints the
prompt size, the tokens served from the prefix cache, and where the window cut the history
(`context_from`: earlier turns shown without their passages; `turns_from`: earlier turns dropped).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from fastapi.testclient import TestClient

from bench.chat_load import COLLECTION, ingest
from bench.common import machine, make_kb, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=1024, help="KB_CHAT_MAX_PROMPT_TOKENS")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()

    from services.api.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        questions = ingest(data_dir, 60)
        kb = make_kb(
            data_dir,
            generator="engine",
            engine_device="cpu",
            engine_disk_cache=False,
            engine_cpu_cache_gb=0,
            chat_max_prompt_tokens=args.window,
            chat_context_tokens=160,
            chat_top_k=2,
            chat_rewrite="heuristic",
        )
        rows, raw = [], []
        with TestClient(create_app(kb=kb)) as client:
            sid = client.post("/v1/chat/sessions", json={"collection": COLLECTION}).json()["id"]
            for t in range(args.turns):
                r = client.post(
                    f"/v1/chat/sessions/{sid}/messages",
                    json={"content": questions[t], "max_tokens": args.max_tokens},
                ).json()
                stored = client.get(f"/v1/chat/sessions/{sid}").json()["messages"]
                window = _window(kb, sid)
                u = r["usage"]
                raw.append({"turn": t + 1, **u, "window": window, "ttft_ms": r["latency"]["ttft_ms"]})
                rows.append(
                    [
                        t + 1,
                        u["prompt_tokens"],
                        u["cached_tokens"],
                        f"{u['cached_tokens'] / u['prompt_tokens']:.0%}",
                        window["context_from"],
                        window["turns_from"],
                        f"{r['latency']['ttft_ms']:.0f}",
                    ]
                )
                assert len(stored) == 2 * (t + 1)
        kb.close()
    headers = ["turn", "prompt tok", "cached tok", "cached %", "context_from", "turns_from", "TTFT ms"]
    print(f"window {args.window} tokens, {machine()}")
    print(table(headers, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chat_window.json").write_text(json.dumps(raw, indent=1))


def _window(kb, sid: str) -> dict[str, int]:  # noqa: ANN001
    from sqlalchemy import select

    from storage.chat_models import ChatMessage

    with kb.db.session() as s:
        row = s.scalars(
            select(ChatMessage)
            .where(ChatMessage.session_id == sid, ChatMessage.role == "user")
            .order_by(ChatMessage.ordinal.desc())
        ).first()
        return dict((row.usage or {}).get("window") or {})


if __name__ == "__main__":
    main()
