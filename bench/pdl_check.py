"""PDL (`engine.pdl`) on a Hopper GPU: a decode-like chain of our kernels captured in a CUDA graph gives the
same bits with it as without, and as eager launches. Exits non-zero on any difference.

    python3 bench/pdl_check.py      # sm_90+ GPU (bench/gpu_pending.sh pdl runs it)

Why a check and not only a benchmark: with PDL a kernel starts while the one ahead still runs, so one that
read its input before ``griddepcontrol.wait`` would read stale data only some of the time. The chain (add +
RMSNorm -> int4 gate_up GEMV -> SiLU x up -> int4 down GEMV -> add + RMSNorm, 8 times over) is replayed 20
times with different inputs: every kernel kind that releases early feeds one that must wait.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import fused_ops, pdl  # noqa: E402
from engine.quant import gpu  # noqa: E402
from engine.quant.quantize import quantize_int4  # noqa: E402

HIDDEN, INTER = 1024, 2048


def _weight(n: int, k: int) -> gpu.GpuWeight:
    g = gpu.pack(quantize_int4(torch.randn(n, k) * 0.02, group=128))
    return gpu.GpuWeight(g.kind, g.n, g.k, {k: t.cuda() for k, t in g.tensors.items()}, g.group)


def mlp_block(x: torch.Tensor, w: torch.Tensor, gu: gpu.GpuWeight, down: gpu.GpuWeight, inter: int):
    """add + RMSNorm -> int4 gate_up -> SiLU x up -> int4 down -> add + RMSNorm, as a decoder layer's MLP
    half runs them at one token (the norm weight ``w`` shared, for brevity)."""
    h, res = fused_ops.add_rmsnorm(x, x, w, 1e-5)
    a = fused_ops.silu_mul(gpu.matmul_small(gu, h), inter)
    return fused_ops.add_rmsnorm(gpu.matmul_small(down, a), res, w, 1e-5)[0]


def main() -> int:
    torch.manual_seed(0)
    gu, down = _weight(2 * INTER, HIDDEN), _weight(HIDDEN, INTER)
    gpu.TUNING[("int4k", 2 * INTER, HIDDEN)] = (128, 2, 4, 3, 5, 64, 2, 2)  # the fp16 GEMV, split-K
    gpu.TUNING[("int4k", HIDDEN, INTER)] = (128, 4, 4, 3, 5, 64, 2, 2)
    w = torch.rand(HIDDEN, device="cuda", dtype=torch.bfloat16) + 0.5
    x0 = torch.randn(1, HIDDEN, device="cuda", dtype=torch.bfloat16)
    gpu.split_locks(x0.device)

    def step(x: torch.Tensor) -> torch.Tensor:
        return mlp_block(x, w, gu, down, INTER)

    outs = {}
    for on in (False, True):
        pdl.ENABLED = on
        x = x0.clone()
        step(x)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = x
            for _ in range(8):
                y = step(y)
        got = []
        for i in range(20):
            x.copy_(x0 * (1 + i / 10))
            graph.replay()
            got.append(y.clone())
        torch.cuda.synchronize()
        outs[on] = torch.stack(got)
    pdl.ENABLED = False
    eager = x0 * (1 + 19 / 10)
    for _ in range(8):
        eager = step(eager)
    same = torch.equal(outs[True], outs[False])
    as_eager = torch.equal(outs[False][-1], eager)
    print(f"pdl_check: graph with PDL == without: {same}; graph == eager: {as_eager}")
    return 0 if same and as_eager else 1


if __name__ == "__main__":
    sys.exit(main())
