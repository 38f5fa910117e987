"""The embedded default's generator on the CPU: dtype and weight formats, against the fp32 default before.

    .venv/bin/python -m bench.cpu_engine --out bench/out

One process, packaged SmolLM2-135M, each configuration in turn on the same prompts (a README excerpt):
- TTFT of a 1,024- and a 256-token prompt (prefix cache off: every prompt prefilled in full);
- decode ms per token at batch 1 (128 tokens after a 256-token prompt) and total tok/s for 8 concurrent
  requests (64 tokens each; includes their 8 x 200-token prefills);
- perplexity on the shipped FAQ text (1,024 tokens), and the weights' packed bytes.
The baselines are the default (fp32, dense) and `transformers` itself (fp32 and bf16 `generate`, same
weights, same threads), all in this run. Prints a table, writes ``cpu_engine.json`` and ``cpu_engine.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import EngineConfig, default_model  # noqa: E402
from engine.devices import cpu_has_native_bf16, in_passing_thread  # noqa: E402
from engine.llm_engine import Engine  # noqa: E402
from engine.loader import load_model, resolve_model_dir  # noqa: E402
from engine.quant.evaluate import eval_text, perplexity  # noqa: E402
from engine.quant.memory import weight_bytes  # noqa: E402
from engine.quant.policy import apply_policy  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

CONFIGS = [  # (label, dtype, quant)
    ("fp32 dense (the default)", "float32", "none"),
    ("fp32 gguf int4 (dequantizing path)", "float32", "gguf"),
    ("bf16 dense (opt-in)", "bfloat16", "none"),
    ("bf16 gguf int4, packed decode", "bfloat16", "gguf"),
    ("bf16 int8, packed decode", "bfloat16", "int8"),
]


def _ids() -> list[int]:
    from engine.tokenizer import Tokenizer

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return Tokenizer(resolve_model_dir(default_model())).encode(text * 3)


def _median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def engine_row(dtype: str, quant: str, ids: list[int], repeats: int) -> dict:
    eng = Engine.from_config(
        EngineConfig(model=default_model(), device="cpu", dtype=dtype, quant=quant, enable_prefix_cache=False)
    )
    greedy = SamplingParams(max_tokens=1, ignore_eos=True)
    try:
        eng.complete(ids[:64], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up (and packing)
        row = {}
        for n in (1024, 256):
            row[f"ttft_{n}_ms"] = _median(lambda n=n: eng.complete(ids[:n], greedy).usage["ttft_ms"], repeats)

        def decode() -> float:
            t0 = time.perf_counter()
            ev = eng.complete(ids[:256], SamplingParams(max_tokens=129, ignore_eos=True))
            return ((time.perf_counter() - t0) * 1000 - ev.usage["ttft_ms"]) / 128

        row["decode_ms"] = _median(decode, repeats)
        done: list[int] = []

        def one(i: int) -> None:
            ev = eng.complete(ids[i * 16 : i * 16 + 200], SamplingParams(max_tokens=64, ignore_eos=True))
            done.append(ev.usage["completion_tokens"])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        row["batch8_tok_s"] = sum(done) / (time.perf_counter() - t0)
        return row
    finally:
        eng.close()


def quality_row(dtype: str, quant: str, ids: list[int]) -> dict:
    model = load_model(resolve_model_dir(default_model()), torch.device("cpu"), getattr(torch, dtype))
    apply_policy(model, quant, source=default_model())
    with torch.inference_mode():
        ppl = perplexity(model, ids, 512)
    return {"perplexity": ppl, "weight_mb": weight_bytes(model) / 1e6}


def hf_row(dtype: str, ids: list[int], repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    folder = str(resolve_model_dir(default_model()))
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()

    def gen(n_prompt: int, new: int) -> float:
        x = torch.tensor([ids[:n_prompt]])
        t0 = time.perf_counter()
        with torch.inference_mode():
            mask = torch.ones_like(x)
            m.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return (time.perf_counter() - t0) * 1000

    gen(64, 4)
    row = {f"ttft_{n}_ms": _median(lambda n=n: gen(n, 1), repeats) for n in (1024, 256)}
    row["decode_ms"] = _median(lambda: (gen(256, 129) - gen(256, 1)) / 128, repeats)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    axes[0].barh(labels, [r["ttft_1024_ms"] for r in rows], color="tab:blue")
    axes[0].set_xlabel("TTFT of a 1,024-token prompt (ms, lower is better)")
    axes[1].barh(labels, [1000 / r["decode_ms"] for r in rows], color="tab:green")
    axes[1].set_xlabel("decode tok/s at batch 1 (higher is better)")
    axes[1].set_yticklabels([])
    fig.suptitle("SmolLM2-135M on this CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-hf", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = _ids()
    from engine.tokenizer import Tokenizer

    faq = Tokenizer(resolve_model_dir(default_model())).encode(eval_text())[:1024]
    rows = []
    for label, dtype, quant in CONFIGS:
        row = {"label": label, "dtype": dtype, "quant": quant}
        # in a passing thread: a pool left in this thread would slow every later engine (engine.devices)
        row |= engine_row(dtype, quant, ids, a.repeats) | in_passing_thread(
            partial(quality_row, dtype, quant, faq)
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not a.skip_hf:
        for dtype in ("float32", "bfloat16"):
            row = {"label": f"transformers {dtype} generate", "dtype": dtype, "quant": "none"}
            rows.append(row | in_passing_thread(partial(hf_row, dtype, ids, a.repeats)))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    meta = {"threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16()}
    meta["torch"] = torch.__version__
    print(f"\nCPU: {meta}")
    print(
        "| configuration | TTFT 1,024 (ms) | TTFT 256 (ms) | decode b1 (ms/tok) | b1 tok/s | vs fp32 |"
        " 8 concurrent tok/s | perplexity | weight MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        b8 = f"{r['batch8_tok_s']:.1f}" if "batch8_tok_s" in r else ""
        ppl = f"{r['perplexity']:.3f}" if "perplexity" in r else ""
        mb = f"{r['weight_mb']:.0f}" if "weight_mb" in r else ""
        print(
            f"| {r['label']} | {r['ttft_1024_ms']:.0f} | {r['ttft_256_ms']:.0f} | {r['decode_ms']:.1f} |"
            f" {1000 / r['decode_ms']:.1f} | {base['decode_ms'] / r['decode_ms']:.2f}x |"
            f" {b8} | {ppl} | {mb} |"
        )
    (out / "cpu_engine.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, out / "cpu_engine.png")


if __name__ == "__main__":
    main()
