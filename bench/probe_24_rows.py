"""2:4's fused int4 kernel at a batch of rows, per Llama-3-8B matrix, with the configs kb would pick.

    python3 bench/probe_24_rows.py [--rows 16]   # on a GPU (~1 min)

Why: `quant_e2e.py`'s 2:4 mode printed nothing at batch 16 in four device calls of 170-545 s. It was not
hung: with the H100 table's one-token configs serving 16 rows (`w4_24_kernel` loops a 16-row block in each
program), qkv took 2,998 us a call, gate_up 12,483 and down 281 on 2026-12-07, so each decode step took
~0.57 s. Batches of 2:4 weights now take the dequantize + GEMM path (`gpu.SPARSE24_MAX_ROWS`); this
probe times the kernel itself (eager launches, first call = compile + run), for a next table's entries.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quant_gpu import SHAPES, make  # noqa: E402
from engine.quant import gpu  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--calls", type=int, default=20)
    a = p.parse_args()
    print(f"| matrix | config at {a.rows} rows | first call s | us a call |")
    for name in ("qkv", "o", "gate_up", "down"):
        n, k = SHAPES[name]
        g = make("int4_24", (torch.randn(n, k, device="cuda") * 0.02).bfloat16())
        x = torch.randn(a.rows, k, device="cuda").bfloat16()
        t0 = time.perf_counter()
        gpu.matmul_small(g, x)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(a.calls):
            gpu.matmul_small(g, x)
        torch.cuda.synchronize()
        us = (time.perf_counter() - t0) / a.calls * 1e6
        print(
            f"| {name} | {gpu._config('int4_24', n, k, 128, a.rows)} | {first:.1f} | {us:.0f} |", flush=True
        )


if __name__ == "__main__":
    main()
