"""What a one-token int4 GEMV gains when its weights were asked into L2 first (`engine.l2_prefetch`).

For o_proj and gate_up of the Llama-3-8B shape (int4 g128, random weights, the shipped launch configs),
each timed by CUDA events around the GEMV alone, after the L2 was flushed (a 256 MB write) and the GPU
slept ~200 us (so that the host has queued the GEMV), with and without the prefetch kernel queued
before the sleep (gate_up: the first 25 / 50 % of its bytes; bulk and line prefetches). Prints a table:
median us over 30 repetitions.

    python3 bench/l2_probe.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import l2_prefetch  # noqa: E402
from engine.quant import gpu  # noqa: E402
from engine.quant.quantize import quantize_int4  # noqa: E402

SHAPES = {"o": (4096, 4096), "gate_up": (28672, 4096)}


class _Layer:
    def __init__(self, g: gpu.GpuWeight) -> None:
        self.gpu = g


def _time(g: gpu.GpuWeight, x: torch.Tensor, amax: torch.Tensor, before, reps: int = 30) -> float:
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(reps):
        flush.fill_(1)
        before()
        # ~200 us: the prefetches land, and the host queues the GEMV before the GPU reaches it (the
        # launch's host time, ~70 us, would otherwise be timed)
        torch.cuda._sleep(400_000)
        e0.record()
        gpu.matmul_small(g, x, amax=amax, silu_inter=g.n // 2 if g.n > 8192 else 0)
        e1.record()
        torch.cuda.synchronize()
        out.append(e0.elapsed_time(e1) * 1000)
    return statistics.median(out)


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        g = gpu.pack(quantize_int4(w, group=128, clip_grid=(1.0,)))
        del w
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        amax = x.float().abs().amax(-1)
        layer = _Layer(g)
        pf = l2_prefetch.LayerPrefetch(layer, layer)  # this matrix as "o": its bytes, the share as gate_up's

        def prefetch(share: float, lines: bool, pf=pf) -> None:
            l2_prefetch.O_SHARE, l2_prefetch.GATE_UP_SHARE, l2_prefetch.LINES = share, 0.0, lines
            l2_prefetch.run_plan(pf.current())  # on this stream, ahead of the sleep

        def warm(g=g, x=x, amax=amax) -> None:  # the GEMV itself just before: what of it L2 kept
            gpu.matmul_small(g, x, amax=amax, silu_inter=g.n // 2 if g.n > 8192 else 0)

        cases = [("cold", lambda: None), ("the same GEMV just before", warm)]
        shares = (1.0,) if name == "o" else (0.25, 0.5)
        for share in shares:
            for lines in (False, True):
                label = f"{int(share * 100)} % by {'lines' if lines else 'bulk'}"
                cases.append((label, lambda s=share, ln=lines: prefetch(s, ln)))
        for label, before in cases:
            rows.append((name, label, _time(g, x, amax, before)))
    print("| matrix | before the GEMV | us (median of 30) |")
    print("|---|---|---:|")
    for name, label, us in rows:
        print(f"| {name} | {label} | {us:.2f} |")


if __name__ == "__main__":
    main()
