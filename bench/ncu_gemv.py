"""Where a one-token int4 GEMV's time goes: the floor of a plain read of the same bytes, and the
kernels under Nsight Compute.

    python3 bench/ncu_gemv.py floor                    # GPU: graph timing, read floor vs shipped GEMVs
    ncu --profile-from-start off --clock-control none --set full -o rep python3 bench/ncu_gemv.py profile

Why: fitted to the per-layer times, a one-token GEMV costs ~6 us plus its bytes at ~3 TB/s
(bench/RESULTS.md). Whether that fixed part is what any kernel reading that many bytes pays on this GPU
(launch, ramp-up, tail) or is ours (the absmax pass, round trips per step, the split-K tail) decides
where the next microseconds are: ``floor`` times a kernel that only reads and sums the same number of
bytes, in the same graph timing as the GEMVs, in the same process; ``profile`` runs each shipped GEMV
once between cudaProfilerStart/Stop so that ``ncu`` reports its stall reasons, achieved bandwidth and
occupancy.
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

from bench.quant_gpu import SHAPES, clone_weight, copies, copy_gbps, graph_ms, make  # noqa: E402
from engine import pdl  # noqa: E402
from engine.quant import gpu  # noqa: E402

LAYERS = ("qkv", "o", "gate_up", "down")
AMAX_GIVEN = {"qkv", "gate_up"}  # the layers after an RMSNorm, which hands over the row's absmax


@triton.jit
def _read_sum(src, out, n, BLOCK: tl.constexpr, STEPS: tl.constexpr, PDL: tl.constexpr = False):
    """Each program reads ``STEPS`` blocks of ``BLOCK`` int32 words and stores their sum (kept so that
    the loads are not dead). ``PDL``: launched with programmatic dependent launch, as the decode kernels
    (`engine.pdl.start`: release the next kernel, wait before the loads; `bench/persistent_probe.py`)."""
    pdl.start(PDL)
    base = tl.program_id(0) * BLOCK * STEPS
    acc = tl.zeros((BLOCK,), tl.int32)
    for s in tl.static_range(STEPS):
        offs = base + s * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(src + offs, mask=offs < n, other=0)
    tl.store(out + tl.program_id(0), tl.sum(acc, 0))


def read_floor(nbytes: int, block: int, steps: int, warps: int) -> float:
    """Microseconds a call to read ``nbytes`` with `_read_sum` (graph timing, copies beyond the L2)."""
    n = nbytes // 4
    bufs = [torch.randint(0, 7, (n,), dtype=torch.int32, device="cuda") for _ in range(copies(nbytes))]
    grid = (triton.cdiv(n, block * steps),)
    out = torch.empty(grid[0], dtype=torch.int32, device="cuda")
    calls = [lambda b=b: _read_sum[grid](b, out, n, BLOCK=block, STEPS=steps, num_warps=warps) for b in bufs]
    us = graph_ms(calls) * 1e3
    del bufs
    return us


def layer(name: str) -> tuple[gpu.GpuWeight, torch.Tensor, torch.Tensor | None]:
    n, k = SHAPES[name]
    g = make("int4k_g128", torch.randn(n, k, device="cuda") * 0.02)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    amax = x.abs().amax(-1).float() if name in AMAX_GIVEN else None
    return g, x, amax


def floor(args: argparse.Namespace) -> None:
    bw = copy_gbps()
    print(json.dumps({"copy_gbps": round(bw, 1)}), flush=True)
    for name in LAYERS:
        g, x, amax = layer(name)
        gs = [g] + [clone_weight(g) for _ in range(copies(g.nbytes()) - 1)]
        row = {
            "layer": name,
            "mb": round(g.nbytes() / 1e6, 2),
            "config": list(gpu._config("int4k", *SHAPES[name], 128, 1)),
        }
        row["gemv_us"] = round(
            graph_ms([lambda c=c, x=x, a=amax: gpu.matmul_small(c, x, amax=a) for c in gs]) * 1e3, 2
        )
        best = None
        for block, steps, warps in ((1024, 1, 4), (2048, 1, 4), (2048, 2, 4), (4096, 1, 8), (4096, 2, 8),
                                    (8192, 1, 8), (1024, 4, 4), (2048, 4, 8)):  # fmt: skip
            us = read_floor(g.nbytes(), block, steps, warps)
            row[f"read_{block}x{steps}w{warps}_us"] = round(us, 2)
            best = us if best is None else min(best, us)
        row["read_best_us"] = round(best, 2)
        row["read_best_pct_bw"] = round(100 * g.nbytes() / best / 1e3 / bw, 1)
        row["gemv_pct_bw"] = round(100 * g.nbytes() / row["gemv_us"] / 1e3 / bw, 1)
        print(json.dumps(row), flush=True)
        del gs, g
        torch.cuda.empty_cache()
    for mb in (2, 4, 8, 16, 32, 64, 128, 512):  # the floor's curve: fixed part and slope
        us = min(read_floor(mb * 2**20, b, s, w) for b, s, w in ((2048, 2, 4), (4096, 2, 8), (8192, 1, 8)))
        print(
            json.dumps(
                {"read_mib": mb, "us": round(us, 2), "pct_bw": round(100 * mb * 2**20 / us / 1e3 / bw, 1)}
            )
        )


def profile(args: argparse.Namespace) -> None:
    calls = []
    for name in LAYERS:
        g, x, amax = layer(name)
        gpu.matmul_small(g, x, amax=amax)  # compile outside the profiled range
        calls.append((name, g, x, amax))
    src = torch.randint(
        0, 7, (SHAPES["gate_up"][0] * SHAPES["gate_up"][1] // 8,), dtype=torch.int32, device="cuda"
    )
    out = torch.empty(1 << 16, dtype=torch.int32, device="cuda")
    grid = (triton.cdiv(src.numel(), 4096 * 2),)

    def read() -> None:
        _read_sum[grid](src, out, src.numel(), BLOCK=4096, STEPS=2, num_warps=8)

    read()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for name, g, x, amax in calls:
        torch.cuda.nvtx.range_push(name)
        gpu.matmul_small(g, x, amax=amax)
        torch.cuda.nvtx.range_pop()
    read()  # the read floor at gate_up's bytes
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled", [c[0] for c in calls] + ["read_sum(gate_up bytes)"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("floor", "profile"))
    args = p.parse_args()
    {"floor": floor, "profile": profile}[args.what](args)


if __name__ == "__main__":
    main()
