"""Would one persistent kernel a layer (or a step) read the int4 weights faster than a kernel a matmul?

    python3 bench/persistent_probe.py            # GPU: graph timing, 4 layers of the 8B shape's int4 bytes

Why: a one-token int4 GEMV is 1.18x a plain read of its bytes, but that read reaches only 51-74 % of the
copy bandwidth at a layer-matmul's size (a kernel pays ~3 us before its bytes; bench/RESULTS.md, issue 6),
so batch-1 decode at 75 % of the roofline needs the bytes of consecutive matmuls streamed without kernel
boundaries. Before writing such a kernel, this measures the bound it could reach: the same bytes read by

- ``sep``: one `_read_sum` kernel a matrix (the floor the GEMVs are measured against), plain launches;
- ``sep_pdl``: the same with programmatic dependent launch (release at start, wait before the loads);
- ``fused``: one persistent kernel a layer, its four matrices in phases with a grid-wide barrier between
  them (every program must have finished phase p before any reads phase p + 1, as a GEMV chain needs);
- ``fused_pre``: the same, each program's first loads of the next phase issued before the barrier
  (weights depend on no earlier phase);
- ``fused_nobar``: the same kernel without barriers: the stream's own rate;
- ``step``: one persistent kernel for all layers' phases, barriers between them.

Every variant sums what it reads (so no load is dead) and is checked against torch's sum.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ncu_gemv import _read_sum  # noqa: E402
from bench.quant_gpu import copy_gbps, graph_ms  # noqa: E402

# int4 g128 bytes of the 8B shape's matrices in decode order (words, scales, zeros; bench/RESULTS.md)
PHASE_MB = {"qkv": 13.4, "o": 8.9, "gate_up": 62.4, "down": 31.2}


@triton.jit
def _barrier(bar, target):
    """Arrive, then spin until ``target`` programs have arrived (release/acquire at GPU scope)."""
    tl.atomic_add(bar, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < 4_000_000):  # capped: programs not co-resident must not hang the GPU
        seen = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        spins += 1


@triton.jit
def _phase(src, n, acc, pid, G, BLOCK: tl.constexpr, UNROLL: tl.constexpr, first):
    """Read chunks pid, pid + G, ... of ``BLOCK * UNROLL`` words of ``src``; ``first`` is this program's
    first chunk, already loaded (or zeros)."""
    chunk = BLOCK * UNROLL
    n_chunks = tl.cdiv(n, chunk)
    acc += first
    for c in range(pid + G, n_chunks, G):
        for u in tl.static_range(UNROLL):
            offs = c * chunk + u * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(src + offs, mask=offs < n, other=0)
    return acc


@triton.jit
def _first(src, n, pid, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """The program's first chunk of a phase (chunk ``pid``), summed over its UNROLL blocks."""
    chunk = BLOCK * UNROLL
    acc = tl.zeros((BLOCK,), tl.int32)
    for u in tl.static_range(UNROLL):
        offs = pid * chunk + u * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(src + offs, mask=offs < n, other=0)
    return acc


@triton.jit
def _cross(src, n, pid, G, bar, k, BLOCK: tl.constexpr, UNROLL: tl.constexpr, BARRIER: tl.constexpr,
           PRE: tl.constexpr):  # fmt: skip
    """From one matrix to the next (``src``): the grid barrier (the ``k + 1``-th) and this program's first
    chunk of ``src``, loaded before the barrier with ``PRE`` (weights depend on no earlier phase), else after
    it. Returns the chunk and the barrier count."""
    nxt = tl.zeros((BLOCK,), tl.int32)
    if PRE:
        nxt = _first(src, n, pid, BLOCK, UNROLL)
    if BARRIER:
        k += 1
        _barrier(bar, k * G)
    if not PRE:
        nxt = _first(src, n, pid, BLOCK, UNROLL)
    return nxt, k


@triton.jit
def _fused(
    p0,
    p1,
    p2,
    p3,
    n0,
    n1,
    n2,
    n3,
    out,
    bar,
    layers,
    stride_layer,
    BLOCK: tl.constexpr,
    UNROLL: tl.constexpr,
    BARRIER: tl.constexpr,
    PRE: tl.constexpr,
):
    """``layers`` layers of four phases (pointers advance ``stride_layer`` words a layer: each layer's
    matrices live in one buffer); a grid barrier after every phase but the last."""
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    acc = tl.zeros((BLOCK,), tl.int32)
    first = _first(p0, n0, pid, BLOCK, UNROLL)
    k = 0
    for layer in range(layers):
        off = layer * stride_layer
        acc = _phase(p0 + off, n0, acc, pid, G, BLOCK, UNROLL, first)
        nxt, k = _cross(p1 + off, n1, pid, G, bar, k, BLOCK, UNROLL, BARRIER, PRE)
        acc = _phase(p1 + off, n1, acc, pid, G, BLOCK, UNROLL, nxt)
        nxt, k = _cross(p2 + off, n2, pid, G, bar, k, BLOCK, UNROLL, BARRIER, PRE)
        acc = _phase(p2 + off, n2, acc, pid, G, BLOCK, UNROLL, nxt)
        nxt, k = _cross(p3 + off, n3, pid, G, bar, k, BLOCK, UNROLL, BARRIER, PRE)
        acc = _phase(p3 + off, n3, acc, pid, G, BLOCK, UNROLL, nxt)
        if layer + 1 < layers:
            first, k = _cross(p0 + off + stride_layer, n0, pid, G, bar, k, BLOCK, UNROLL, BARRIER, PRE)
    tl.store(out + pid, tl.sum(acc, 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--per-sm", default="1,2,4")
    ap.add_argument("--blocks", default="2048:2:4,4096:2:8,2048:4:8,1024:4:4")
    args = ap.parse_args()
    torch.manual_seed(0)
    bw = copy_gbps()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    words = [int(mb * 1e6) // 4 // 4096 * 4096 for mb in PHASE_MB.values()]
    stride = sum(words)
    L = args.layers
    buf = torch.randint(0, 7, (L * stride,), dtype=torch.int32, device="cuda")
    layer_bytes = stride * 4
    offs = [sum(words[:i]) for i in range(4)]
    views = [
        [buf[layer * stride + offs[i] : layer * stride + offs[i] + words[i]] for i in range(4)]
        for layer in range(L)
    ]
    want = int(buf.to(torch.int64).sum().item())
    print(
        json.dumps(
            {"copy_gbps": round(bw, 1), "sms": sms, "layers": L, "layer_mb": round(layer_bytes / 1e6, 1)}
        ),
        flush=True,
    )
    rows = []

    def record(name: str, us_layer: float, ok: bool, **cfg) -> None:
        row = {
            "variant": name,
            **cfg,
            "us_layer": round(us_layer, 2),
            "pct_bw": round(100 * layer_bytes / us_layer / 1e3 / bw, 1),
            "ok": ok,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    out = torch.zeros(1 << 16, dtype=torch.int32, device="cuda")
    for block, steps, warps in ((2048, 2, 4), (4096, 2, 8), (8192, 1, 8)):
        for name, use_pdl in (("sep", False), ("sep_pdl", True)):
            outs = [
                torch.zeros(triton.cdiv(w, block * steps), dtype=torch.int32, device="cuda") for w in words
            ]

            def run(block=block, steps=steps, warps=warps, use_pdl=use_pdl, outs=outs) -> None:
                for layer in range(L):
                    for i in range(4):
                        v = views[layer][i]
                        grid = (triton.cdiv(v.numel(), block * steps),)
                        kw = {"PDL": True, "launch_pdl": True} if use_pdl else {"PDL": False}
                        _read_sum[grid](
                            v, outs[i], v.numel(), BLOCK=block, STEPS=steps, num_warps=warps, **kw
                        )

            run()
            torch.cuda.synchronize()
            record(name, graph_ms([run]) * 1e3 / L, True, block=block, steps=steps, warps=warps)
    bar = torch.zeros(L, dtype=torch.int32, device="cuda")
    for spec in args.blocks.split(","):
        block, unroll, warps = (int(v) for v in spec.split(":"))
        for per_sm in (int(v) for v in args.per_sm.split(",")):
            G = sms * per_sm
            if G * warps > sms * 64:
                continue
            for name, barrier, pre, per_layer in (
                ("fused", True, False, True),
                ("fused_pre", True, True, True),
                ("fused_nobar", False, False, True),
                ("step", True, True, False),
            ):
                part = out[:G]

                def run(
                    G=G,
                    barrier=barrier,
                    pre=pre,
                    per_layer=per_layer,
                    block=block,
                    unroll=unroll,
                    warps=warps,
                    part=part,
                ) -> None:
                    bar.zero_()
                    if per_layer:  # a counter a layer's kernel, all zeroed by one memset
                        for layer in range(L):
                            v = views[layer]
                            _fused[(G,)](
                                v[0],
                                v[1],
                                v[2],
                                v[3],
                                *words,
                                part,
                                bar[layer:],
                                1,
                                stride,
                                BLOCK=block,
                                UNROLL=unroll,
                                BARRIER=barrier,
                                PRE=pre,
                                num_warps=warps,
                            )
                    else:
                        v = views[0]
                        _fused[(G,)](
                            v[0],
                            v[1],
                            v[2],
                            v[3],
                            *words,
                            part,
                            bar,
                            L,
                            stride,
                            BLOCK=block,
                            UNROLL=unroll,
                            BARRIER=barrier,
                            PRE=pre,
                            num_warps=warps,
                        )

                if per_layer:
                    run()
                    torch.cuda.synchronize()
                    got = int(part.to(torch.int64).sum().item())
                    ok = got == int(buf[(L - 1) * stride : L * stride].to(torch.int64).sum().item())
                else:
                    run()
                    torch.cuda.synchronize()
                    ok = int(part.to(torch.int64).sum().item()) == want
                us = graph_ms([run]) * 1e3 / L
                record(name, us, ok, block=block, unroll=unroll, warps=warps, programs=G)
    best = {}
    for r in rows:
        if r["ok"] and (r["variant"] not in best or r["us_layer"] < best[r["variant"]]["us_layer"]):
            best[r["variant"]] = r
    print("\n| variant | best us a layer | % copy bw | config |\n|---|---:|---:|---|")
    for name, r in best.items():
        cfg = {k: v for k, v in r.items() if k not in ("variant", "us_layer", "pct_bw", "ok")}
        print(f"| {name} | {r['us_layer']} | {r['pct_bw']} | {cfg} |")


if __name__ == "__main__":
    main()
