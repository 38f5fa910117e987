"""Decode attention with RoPE in its own launch against RoPE inside the attention kernel (``ROPE``), alone.

    python3 bench/attn_rope_probe.py      # a GPU; Llama-3-8B's attention shape, one sequence, bf16 KV

Why: in the whole int4 model the fused kernel made the batch-1 step 20 % slower (bench/RESULTS.md,
2026-12-07), far more than the RoPE launch it removes. This times the two ways in CUDA graphs of 32
launches, with PDL on and off, at a few context lengths: the kernel alone, apart from its neighbours.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import paged_attn_triton as pat  # noqa: E402
from engine import pdl  # noqa: E402
from engine.attention import pack_meta  # noqa: E402
from engine.fused_ops import rope_qk  # noqa: E402

NH, KVH, HD, BS = 32, 8, 128, 64


def case(ctx: int, dev: str = "cuda"):
    bf = torch.bfloat16
    nblk = -(-ctx // BS)
    kc = torch.randn(nblk + 1, BS, KVH, HD, device=dev, dtype=bf)
    vc = torch.randn_like(kc)
    table = list(range(1, nblk + 1))
    meta = pack_meta([(0, 1, ctx, table)], torch.device(dev))
    qkv = torch.randn(1, (NH + 2 * KVH) * HD, device=dev, dtype=bf)
    q, k, v = qkv.split([NH * HD, KVH * HD, KVH * HD], dim=-1)
    q, k, v = q.view(1, NH, HD), k.view(1, KVH, HD), v.view(1, KVH, HD)
    ang = torch.full((1, 1, HD), 0.3 * (ctx - 1), device=dev)
    cos, sin = ang.cos().to(bf), ang.sin().to(bf)
    slots = torch.tensor([table[(ctx - 1) // BS] * BS + (ctx - 1) % BS], device=dev)

    def apart() -> torch.Tensor:
        qo, _ = rope_qk(q, k, cos, sin, (kc, vc, slots, v))
        return pat.paged_attention(qo, kc, vc, None, None, meta, True)

    def fused() -> torch.Tensor:
        return pat.paged_attention(q, kc, vc, None, None, meta, True, (k, v, cos, sin, slots))

    return apart, fused


def graph_us(fn, calls: int = 32, replays: int = 100) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        for _ in range(replays):
            g.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / replays / calls)
    return best


def main() -> None:
    pat.ROPE_IN_KERNEL = True
    print(torch.cuda.get_device_name(), "| ctx | PDL | splits | RoPE launch + attention us | fused | same |")
    for use_pdl in (True, False):
        pdl.ENABLED = use_pdl
        for ctx in (300, 1000, 4000, 16000):
            apart, fused = case(ctx)
            same = torch.equal(apart(), fused())
            splits = pat.plan(NH // KVH, ctx, 1, KVH, BS, True, torch.device("cuda"))["splits"]
            a, f = graph_us(apart), graph_us(fused)
            print(f"| {ctx} | {use_pdl} | {splits} | {a:.2f} | {f:.2f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
