"""A turn whose whole history comes back from the CPU tier: copied before the step, or layer by layer beside
it (`engine.kv_restore`), with the copy kernel's program count as a variant (issue 3's sessions goal).

One engine (Llama-3-8B shape, random bf16 weights, int8 or bf16 KV) whose GPU pool holds one ~15K-token
history but not two. Two conversations A and B take turns: each turn of A finds its history on the CPU tier
(B's turn pushed it there) and restores ~15K tokens, then pushes B out, and so on; each turn is the same
history with new tokens, so every variant restores the same amount. Per variant: the TTFT of
those turns (median), the tokens restored, and, for reference, the new tokens alone and a recompute of the
same prompt. Variants share the engine (`Scheduler.restorer` toggled, `kv_restore_triton.PROGRAMS` set).

Run:  python3 bench/restore_probe.py --out $OUT   (``--tiny``: two small layers on the CPU, to test it)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chat_gpu import random_llama8b  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.llm_engine import Engine  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

ONE = SamplingParams(max_tokens=1, ignore_eos=True)
ANSWER = SamplingParams(max_tokens=4, ignore_eos=True)


def variants(spec: str) -> list[tuple[str, int | None]]:
    """``before`` (copied before the step), ``graph`` (layer by layer inside the prefill graph, the
    programs it was captured with) or ``layer:P`` (layer by layer, eagerly, P programs; 0 = one an item)."""
    out = []
    for v in spec.split(","):
        out.append((v, None) if v in ("before", "graph") else (v, int(v.split(":")[1])))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--history", type=int, default=15360)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--turns", type=int, default=6, help="turns per conversation and variant")
    p.add_argument("--kv-dtype", default="int8")
    p.add_argument("--variants", default="before,graph,layer:64,before,graph")
    a = p.parse_args()
    if a.tiny:
        a.history, a.new = 300, 16
    vocab = 512 if a.tiny else 128256
    model = random_llama8b(vocab, [], a.tiny, max_position=65536)
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(10, vocab, (n,), generator=g).tolist()

    bs = 64 if not a.tiny else 16
    per_tok = model.cfg.kv_bytes_per_token(1 if a.kv_dtype == "int8" else 2)
    pool_gb = 1.4 * a.history * per_tok / 2**30  # one history and a bit, not two
    cfg = EngineConfig(
        model="<in-memory>",
        device="cpu" if a.tiny else "cuda",
        block_size=bs,
        kv_dtype=a.kv_dtype,
        kv_cache_gb=pool_gb,
        cpu_cache_gb=max(1.0, 6 * a.history * per_tok / 2**30),
        restore_layerwise=True,
        cuda_graph_precapture_tokens=0 if a.tiny else 2 * a.history,
    )
    t0 = time.perf_counter()
    eng = Engine(cfg, model=model, fingerprint="random-llama3-8b-seed0")
    res: dict = {"start_s": round(time.perf_counter() - t0, 1), "pool_tokens": eng.bm.num_blocks * bs}
    restorer = eng.scheduler.restorer
    from engine import kv_restore_triton

    hist = {c: ids(a.history) for c in "AB"}
    for c in "AB":  # first turns (recompute), and a warm-up round of restores for every kernel variant
        hist[c] += eng.complete(hist[c], ANSWER).token_ids
    # every variant gets the same turns, so where a turn restores as many tokens as under a ``before``
    # variant (the pool's state decides that), copying the same bytes into the same graph must give the
    # same answer: `same_answers_as_before` checks the in-graph copies on the GPU
    news = [ids(a.new) for _ in range(2 * (a.turns + 1))]
    before: dict[tuple, tuple] = {}  # (turn, cpu tokens, prompt tokens) -> a before variant's answer
    graph_default = restorer.in_graphs
    for name, programs in variants(a.variants):
        eng.scheduler.restorer = None if name == "before" else restorer
        restorer.in_graphs = graph_default and name == "graph"
        if programs is not None:
            kv_restore_triton.PROGRAMS = programs
            restorer.min_bytes = 0  # layer by layer whatever the size (the tiny run restores a few KB)
        rows, said = [], []
        for i in range(a.turns + 1):  # the first round of each variant warms it (a compile, a capture)
            for j, c in enumerate("AB"):
                prompt = hist[c] + news[2 * i + j]  # the same history, new tokens: every turn restores it
                ev = eng.complete(prompt, ANSWER)
                rows.append((ev.usage["ttft_ms"], ev.usage["cached_from"]["cpu"], ev.usage["prompt_tokens"]))
                said.append(((2 * i + j, *rows[-1][1:]), tuple(ev.token_ids)))
        rows = rows[2:]
        name = name if name not in res else name + "_again"
        if name.startswith("before"):
            before.update(said)
        same = [before[k] == ans for k, ans in said if k in before]
        res[name] = {
            "ttft_ms": [round(r[0], 1) for r in rows],
            "median_ms": round(statistics.median(r[0] for r in rows), 1),
            "cpu_tokens": statistics.median(r[1] for r in rows),
            "prompt_tokens": rows[-1][2],
            "same_answers_as_before": f"{sum(same)}/{len(same)}",
        }
        print(f"{name:10s} median {res[name]['median_ms']:7.1f} ms  {res[name]['ttft_ms']}  "
              f"cpu tokens {res[name]['cpu_tokens']}  same answers as before: "
              f"{res[name]['same_answers_as_before']}", flush=True)  # fmt: skip
    restorer.in_graphs = graph_default
    eng.scheduler.restorer = restorer
    res["layerwise_stats"] = eng.stats()["layerwise_restores"]
    eng.scheduler.prefix_cache = False
    res["alone_ms"] = statistics.median(eng.complete(ids(a.new), ONE).usage["ttft_ms"] for _ in range(5))
    res["recompute_ms"] = statistics.median(eng.complete(hist["A"], ONE).usage["ttft_ms"] for _ in range(3))
    eng.close()
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}), res["layerwise_stats"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "restore_probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
