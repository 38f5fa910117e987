"""``kb engine chat`` and ``kb engine bench-turns`` (mounted by the service CLI as ``kb engine``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from engine.config import EngineConfig, default_data_dir, default_model
from engine.llm_engine import Engine
from engine.sampling import SamplingParams

app = typer.Typer(help="kb's own generator engine.", no_args_is_help=True)

# A fixed conversation: the same questions every run, so two runs (or two processes) are comparable.
BENCH_QUESTIONS = [
    "Hi! I ordered a desk lamp last week and it has not arrived. Can you help?",
    "The order number is 4471. What could have delayed it?",
    "Can you explain how I can track the parcel myself?",
    "If it is lost, do I get a refund or a replacement?",
    "How long does a refund usually take?",
    "Could you summarise what we discussed so far in two sentences?",
    "What should I do if the lamp arrives damaged?",
    "Is there a warranty on the lamp?",
    "Can I change the delivery address now?",
    "Thanks. Any last tips for ordering online?",
]
SYSTEM = "You are a concise, friendly customer-service assistant."


def _engine(model: str | None, device: str, data_dir: Path | None, cpu_cache_gb: float) -> Engine:
    data = data_dir or default_data_dir()
    cfg = EngineConfig(
        model=model or default_model(),
        device=device,
        disk_dir=str(Path(data) / "kv_cache"),
        cpu_cache_gb=cpu_cache_gb,
    )
    return Engine.from_config(cfg)


@app.command("bench-turns")
def bench_turns(
    turns: int = typer.Option(5, "--turns", min=1, max=len(BENCH_QUESTIONS)),
    as_json: bool = typer.Option(False, "--json", help="print one JSON list"),
    model: str | None = typer.Option(None, help="model folder or .gguf (default: packaged)"),
    device: str = typer.Option("auto"),
    data_dir: Path | None = typer.Option(None, help="data dir; the disk KV tier is <data>/kv_cache"),
    max_tokens: int = typer.Option(48),
) -> None:
    """Run a fixed, greedy multi-turn conversation and report reuse per turn."""
    logging.basicConfig(level=logging.WARNING)
    eng = _engine(model, device, data_dir, 0.5)
    msgs: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    rows = []
    try:
        for i in range(turns):
            msgs.append({"role": "user", "content": BENCH_QUESTIONS[i]})
            ev = eng.complete(msgs, SamplingParams(max_tokens=max_tokens))
            msgs.append({"role": "assistant", "content": ev.text})
            u = ev.usage or {}
            rows.append(
                {
                    "turn": i + 1,
                    "prompt_tokens": u["prompt_tokens"],
                    "cached_tokens": u["cached_tokens"],
                    "cached_from": u["cached_from"],
                    "completion_tokens": u["completion_tokens"],
                    "ttft_ms": u["ttft_ms"],
                    "text": ev.text,
                    "reuse": u["reuse"],
                }
            )
            if not as_json:
                typer.echo(
                    f"turn {i + 1}: prompt {u['prompt_tokens']} cached {u['cached_tokens']} "
                    f"{u['cached_from']} ttft {u['ttft_ms']} ms: {ev.text[:60]!r}"
                )
    finally:
        eng.close()
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))


@app.command()
def chat(
    model: str | None = typer.Option(None, help="model folder or .gguf (default: packaged)"),
    device: str = typer.Option("auto"),
    data_dir: Path | None = typer.Option(None),
    system: str = typer.Option(SYSTEM),
    max_tokens: int = typer.Option(256),
    temperature: float = typer.Option(0.0),
) -> None:
    """Interactive chat; earlier turns are reused from the KV cache. ``/exit`` quits."""
    eng = _engine(model, device, data_dir, 0.5)
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}]
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            msgs.append({"role": "user", "content": line})
            typer.echo("bot> ", nl=False)
            parts = []
            for ev in eng.generate(msgs, SamplingParams(max_tokens=max_tokens, temperature=temperature)):
                typer.echo(ev.text, nl=False)
                parts.append(ev.text)
                if ev.type == "finish":
                    u = ev.usage or {}
                    typer.echo(
                        f"\n[{u.get('completion_tokens')} tokens, cached {u.get('cached_tokens')}"
                        f"/{u.get('prompt_tokens')}, ttft {u.get('ttft_ms')} ms]"
                    )
                elif ev.type == "error":
                    typer.echo(f"\n[error: {ev.text}]")
            msgs.append({"role": "assistant", "content": "".join(parts)})
    finally:
        eng.close()


@app.command("bench-quality")
def bench_quality(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object {mode: {...}}"),
    modes: str | None = typer.Option(None, help="comma-separated modes (default: all available)"),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=16, help="tokens of the shipped FAQ text"),
    model: str | None = typer.Option(None, help="model folder or .gguf (default: packaged)"),
    device: str = typer.Option("cpu"),
) -> None:
    """Perplexity, weight bytes and sparsity of each quantization mode on the shipped FAQ text."""
    from engine.loader import resolve_model_dir
    from engine.quant.bench import MODES, run_bench

    logging.basicConfig(level=logging.WARNING)
    source = model or default_model()
    wanted = [m.strip() for m in modes.split(",") if m.strip()] if modes else None
    bad = [m for m in wanted or [] if m not in MODES]
    if bad:
        raise typer.BadParameter(f"unknown modes {bad}; choose from {', '.join(MODES)}", param_hint="--modes")
    rows = run_bench(resolve_model_dir(source), source, wanted, max_tokens, device=device)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    typer.echo(
        f"{'mode':24} {'perplexity':>10} {'vs base':>8} {'weight MB':>10} {'w-sparse':>8} {'a-sparse':>8}"
    )
    for mode, r in rows.items():
        vs = f"{r['vs_unquantized']:+.2%}" if "vs_unquantized" in r else "-"
        typer.echo(
            f"{mode:24} {r['perplexity']:10.3f} {vs:>8} {r['weight_bytes'] / 1e6:10.1f}"
            f" {r['sparsity']['weights']:8.2f} {r['sparsity']['activations']:8.2f}"
        )


if __name__ == "__main__":
    app()
