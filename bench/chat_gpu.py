"""Chat under load on a GPU: 16 sessions x 5 turns through `kb engine-serve` (8B shape), KV reuse on/off.

    # here (CPU): real ingestion + retrieval of the FAQ, recorded per turn, plus the tokenizer
    .venv/bin/python -m bench.chat_gpu prepare --out bench/out/chat_gpu_bundle
    # on the GPU box (random Llama-3-8B-shape weights, 24 GiB cap):
    python3 -m bench.chat_gpu run --bundle bench/out/chat_gpu_bundle --out $OUT

Why two halves. The GPU machine cannot hold kb's whole search stack (the embedder packages alone are
larger than what can travel to it), and in production it does not: the API box retrieves and builds the
prompt, the GPU box runs `kb engine-serve` (compose.yaml). So `prepare` runs the real hybrid retrieval for
every turn on this CPU box and records the passages and their retrieval time; `run` starts the real
`engine-serve` app (uvicorn, our engine on random weights of the Llama-3-8B shape) and drives it like the
API would: each turn's prompt is built by the same code as the sessions API (`fit_window` over the history,
numbered passages, the model's own answers verbatim), streamed over `/v1/chat/completions`. TTFT is
measured by the client (request sent -> first content chunk), so it includes HTTP, queueing behind the
other 15 sessions and the prefill. Retrieval time (CPU, recorded) is reported beside it.
The vocabulary is the SmolLM2 tokenizer's (49,152 rows, not Llama-3's 128,256) so that text round-trips.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.chat.context import count_text_with, select_within_budget
from services.chat.prompt import Passage, Turn, Window, fit_window, system_message

SYSTEM_PROMPT = "You are a helpful customer-service assistant. Answer from the sources."


def prepare(args: argparse.Namespace) -> None:
    """Ingest FAQ answers, retrieve for each session's turns, save passages + tokenizer."""
    import tempfile

    from bench.chat_load import COLLECTION, ingest
    from bench.common import make_kb
    from engine.config import default_model
    from engine.loader import resolve_model_dir
    from services.chat.context import min_score_for, retrieve

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        qs = ingest(Path(tmp), args.docs)
        kb = make_kb(Path(tmp))
        try:
            sessions = []
            for s in range(args.sessions):
                turns = []
                for t in range(args.turns):
                    q = qs[(s * args.turns + t) % len(qs)]
                    got = retrieve(
                        kb.searcher, COLLECTION, [q], args.top_k, min_score_for("minilm", None), None
                    )
                    turns.append(
                        {
                            "question": q,
                            "passages": [p.to_dict() for p in got.passages],
                            "retrieval_ms": got.retrieval_ms,
                        }
                    )
                sessions.append(turns)
        finally:
            kb.close()
    (out / "turns.json").write_text(json.dumps({"sessions": sessions, "args": vars(args)}, indent=1))
    src = resolve_model_dir(default_model())
    tok = out / "tokenizer"
    tok.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            shutil.copy(f, tok / f.name)
    shutil.copy(src / "config.json", tok / "source_config.json")
    print(f"wrote {out}: {args.sessions} sessions x {args.turns} turns, tokenizer from {src.name}")


def random_llama8b(vocab: int, eos: list[int], tiny: bool = False, max_position: int = 8192):  # noqa: ANN201
    """Our decoder with the Llama-3-8B shape and N(0, 0.02) weights, built straight on the GPU
    (``tiny``: 2 small layers on the CPU, to test this script)."""
    import torch

    from engine.config import ModelConfig
    from engine.model import LlamaForCausalLM

    mc = ModelConfig(
        vocab_size=vocab,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=500000.0,
        max_position=max_position,
        eos_token_ids=eos,
    )
    dev = "cpu" if tiny else "cuda"
    if tiny:
        mc.hidden_size, mc.intermediate_size, mc.num_layers, mc.num_heads, mc.num_kv_heads = 64, 128, 2, 4, 2
        mc.head_dim = 16
    with torch.device("meta"):
        m = LlamaForCausalLM(mc)
    m = m.to(torch.float32 if tiny else torch.bfloat16).to_empty(device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    m.finish_load(torch.device(dev))
    return m.eval()


class Server:
    """`kb engine-serve`'s app on uvicorn in a thread (one process: the engine owns the GPU)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


async def one_turn(client: Any, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    body = {
        "model": "kb-engine",
        "messages": messages,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = (time.perf_counter() - started) * 1000
                    text.append(piece)
            if chunk.get("usage"):
                usage = chunk["usage"]
    details = usage.get("prompt_tokens_details") or {}
    return {
        "ttft_ms": ttft if ttft is not None else (time.perf_counter() - started) * 1000,
        "total_ms": (time.perf_counter() - started) * 1000,
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached_tokens": details.get("cached_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "answer": "".join(text),
    }


async def session(client: Any, turns: list[dict[str, Any]], gen: Any, args: argparse.Namespace) -> list[dict]:
    """One customer: each turn's prompt built exactly as the sessions API builds it."""
    system = system_message(None, SYSTEM_PROMPT)
    history: list[Turn] = []
    window = Window()
    rows = []
    for t in turns:
        chosen = select_within_budget(
            [Passage.from_dict(p) for p in t["passages"]], args.context_tokens, count_text_with(gen)
        )
        messages, window, turn = fit_window(
            system,
            history,
            t["question"],
            chosen,
            window,
            gen.count_tokens,
            args.max_prompt_tokens,
            args.max_tokens,
            0.6,
        )
        row = await one_turn(client, messages, args.max_tokens)
        turn.answer = row.pop("answer")
        history.append(turn)
        rows.append({**row, "retrieval_ms": t["retrieval_ms"]})
    return rows


async def drive(
    port: int, sessions: list[list[dict]], gen: Any, args: argparse.Namespace
) -> tuple[list, float]:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        await session(client, sessions[0][:2], gen, args)  # warm-up: graphs, allocator, first-call costs
        t0 = time.perf_counter()
        results = await asyncio.gather(*(session(client, s, gen, args) for s in sessions))
        return list(results), time.perf_counter() - t0


class TokenCounter:
    """What the API box does to size prompts: the model's tokenizer and chat template, no engine."""

    def __init__(self, tokenizer_dir: Path) -> None:
        from engine.tokenizer import Tokenizer

        self.tok = Tokenizer(tokenizer_dir)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.tok.apply_chat_template(messages))


def client_process(port: int, args: argparse.Namespace) -> tuple[list, float]:
    """The 16 customers in their own process, as the API box is in production: sharing the engine's
    interpreter (GIL) with the client would add the client's own work to every TTFT."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, "-m", "bench.chat_gpu", "drive", "--port", str(port), "--result", out.name,
               "--bundle", args.bundle, "--sessions", str(args.sessions), "--turns", str(args.turns),
               "--max-tokens", str(args.max_tokens), "--context-tokens", str(args.context_tokens),
               "--max-prompt-tokens", str(args.max_prompt_tokens)]  # fmt: skip
        subprocess.run(cmd, check=True)
        data = json.loads(Path(out.name).read_text())
    return data["results"], data["wall_s"]


def drive_main(args: argparse.Namespace) -> None:
    bundle = Path(args.bundle)
    sessions = json.loads((bundle / "turns.json").read_text())["sessions"][: args.sessions]
    sessions = [s[: args.turns] for s in sessions]
    counter = TokenCounter(bundle / "tokenizer")
    results, wall = asyncio.run(drive(args.port, sessions, counter, args))
    Path(args.result).write_text(json.dumps({"results": results, "wall_s": wall}))


def phase(model: Any, tok: Any, sessions: list, reuse: bool, args: argparse.Namespace) -> tuple[list, float]:
    """One engine (reuse on or off) behind `kb engine-serve`'s app, driven by all sessions; torn down."""
    from engine.config import EngineConfig
    from engine.llm_engine import Engine
    from services.chat.generators.engine_local import EngineGenerator
    from services.engine_server.app import create_engine_app

    cfg = EngineConfig(
        model="<in-memory>",
        device="cpu" if args.tiny else "cuda",
        num_kv_blocks=256 if args.tiny else None,
        block_size=args.block_size,
        gpu_memory_gb=args.cap_gib - 1.5,
        cpu_cache_gb=args.cpu_cache_gb if reuse else 0.0,
        enable_prefix_cache=reuse,
        max_num_seqs=64,
        max_batch_tokens=args.max_batch_tokens,
        prefill_graph_tokens=args.prefill_graph_tokens,
    )
    eng = Engine(cfg, model=model, tokenizer=tok, fingerprint="random-llama3-8b-shape-smollm2-vocab")
    gen = EngineGenerator(eng, model_name="kb-engine", owns_engine=False)
    server = Server(create_engine_app(generator=gen, default_max_tokens=args.max_tokens))
    try:
        if args.in_process_client:
            return asyncio.run(drive(server.port, sessions, gen, args))
        return client_process(server.port, args)
    finally:
        server.stop()
        eng.close()
        # the app and its lifespan closure outlive this call; drop what holds GPU and pinned memory
        eng.runner = eng.bm = eng.scheduler = eng.cpu_tier = None
        gen.engine = None


def run(args: argparse.Namespace) -> None:
    import torch

    from bench.chat_load import comparison_table, plot, summarize
    from engine.tokenizer import Tokenizer

    bundle = Path(args.bundle)
    data = json.loads((bundle / "turns.json").read_text())
    sessions = data["sessions"][: args.sessions]
    tok = Tokenizer(bundle / "tokenizer")
    if not args.tiny:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total))
    model = random_llama8b(len(tok.hf), sorted(tok.eos_ids), args.tiny)
    summary: dict[str, Any] = {}
    for name, reuse in (("reuse", True), ("no_reuse", False)):
        results, wall = phase(model, tok, sessions, reuse, args)
        summary[name] = summarize(results, wall, args.turns)
        summary[name]["raw"] = results
        print(f"{name}: {wall:.1f} s", flush=True)
        gc.collect()  # the phase's engine (KV pool, CUDA graphs) must be gone before the next one
        if not args.tiny:
            torch.cuda.empty_cache()
    peak = 0.0 if args.tiny else torch.cuda.max_memory_allocated() / 2**30
    print(comparison_table(summary))
    retr = [r["retrieval_ms"] for s in summary["reuse"]["raw"] for r in s]
    all_p99 = {
        k: float(np.percentile([r["ttft_ms"] for s in v["raw"] for r in s], 99)) for k, v in summary.items()
    }
    for k, s in summary.items():
        print(
            f"{k}: wall {s['wall_s']:.1f} s, {s['turns_per_s']:.2f} turns/s, "
            f"{s['completion_tok_per_s']:.0f} completion tok/s, {s['prefilled_tokens']} tokens prefilled, "
            f"p99 TTFT all turns {all_p99[k]:.0f} ms"
        )
    print(
        f"retrieval (CPU, recorded): p50 {np.percentile(retr, 50):.1f} ms, "
        f"p99 {np.percentile(retr, 99):.1f} ms"
    )
    print(f"peak GPU memory {peak:.2f} GiB (cap {args.cap_gib} GiB)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = "cpu (tiny)" if args.tiny else torch.cuda.get_device_name(0)
    meta = {"gpu": gpu, "peak_gib": peak, "args": vars(args), "p99_all": all_p99}
    (out / "chat_gpu.json").write_text(json.dumps({"meta": meta, **summary}, indent=1))
    title = f"{args.sessions} sessions x {args.turns} turns, Llama-3-8B shape on {meta['gpu']}"
    plot(summary, out / "chat_gpu_ttft.png", title)


def _turn_args(p: argparse.ArgumentParser) -> None:
    """What shapes a turn: shared by `run` and its client process `drive`."""
    p.add_argument("--bundle", default="bench/out/chat_gpu_bundle")
    for name, default in (("sessions", 16), ("turns", 5), ("max-tokens", 64), ("context-tokens", 600)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--max-prompt-tokens", type=int, default=8192)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--sessions", type=int, default=16)
    a.add_argument("--turns", type=int, default=5)
    a.add_argument("--docs", type=int, default=200)
    a.add_argument("--top-k", type=int, default=4)
    a.add_argument("--out", default="bench/out/chat_gpu_bundle")
    b = sub.add_parser("run")
    _turn_args(b)
    b.add_argument("--max-batch-tokens", type=int, default=2048)
    b.add_argument("--block-size", type=int, default=64)
    b.add_argument("--cap-gib", type=float, default=24.0)
    b.add_argument("--cpu-cache-gb", type=float, default=16.0)
    b.add_argument(
        "--prefill-graph-tokens",
        type=int,
        default=None,
        help="EngineConfig.prefill_graph_tokens (unset: its default)",
    )
    b.add_argument("--out", default="bench/out")
    b.add_argument("--tiny", action="store_true", help="2 small random layers on the CPU (script test)")
    b.add_argument("--in-process-client", action="store_true", help="drive from the engine's process")
    d = sub.add_parser("drive", help="(internal) the client process of `run`")
    _turn_args(d)
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--result", required=True)
    args = p.parse_args()
    {"prepare": prepare, "run": run, "drive": drive_main}[args.cmd](args)


if __name__ == "__main__":
    main()
