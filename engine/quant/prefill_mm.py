"""Prefill rows of an int4 (K-packed) layer on tensor cores, reading the packed weight in place.

Why: above `gpu.CHUNK_ROWS` rows a quantized layer dequantized its whole weight to bf16 and ran a cuBLAS
GEMM, so every prefill wrote and re-read the bf16 model (16 GB for an 8B model) besides its GEMMs: on an
H100 an int4 256-token prefill took 14.1 ms of kernels against 7.9 ms for bf16 weights, and a chat turn
of an int4 model paid that on every turn (bench/RESULTS.md, 2026-12-05). Here the codes become bf16 in
registers, tile by tile (`triton_w4k_prefill`), and the weight is read as int4 once per row tile.

Off until timed (`ENABLED`); `bench/int4_prefill_probe.py` times it against the dequantize-then-GEMM path
and against bf16 weights, per layer shape and row count.
"""

from __future__ import annotations

import torch

from engine.quant import gpu

ENABLED = False
MAX_ROWS = 1024  # above: the dequantized weight's GEMM, whose one-time dequantization is then a small share
# (N, K) -> (block_m, block_n, block_r, num_warps, num_stages[, wide]); block_r word rows a step (8 codes
# each: a dot over 8 x block_r of K), dividing the group's (16 for group 128) so that a step has one scale
# a column, and at least 2 (a tensor-core dot spans at least 16 of K); wide: `triton_w4k_prefill` WIDE
CONFIGS: dict[tuple[int, int], tuple[int, ...]] = {}
DEFAULT = (128, 128, 16, 8, 3)


def config(g: gpu.GpuWeight) -> tuple[int, ...]:
    """The launch config for ``g``'s shape: a measured one, else `DEFAULT`."""
    return CONFIGS.get((g.n, g.k), DEFAULT)


def usable(g: gpu.GpuWeight, rows: int, block_r: int) -> bool:
    """Whether this path serves ``rows`` rows of ``g``: int4 K-packed, enough rows for tensor cores to pay
    (more than a decode chunk), and steps of ``block_r`` word rows that tile the groups and K."""
    if g.kind != "int4k" or not gpu.CHUNK_ROWS < rows <= MAX_ROWS:
        return False
    return block_r >= 2 and g.group % (8 * block_r) == 0 and (g.k // 8) % block_r == 0


def matmul_prefill(
    g: gpu.GpuWeight, x: torch.Tensor, cfg: tuple[int, ...] | None = None
) -> torch.Tensor | None:
    """``x [M, K] @ W.T`` for an int4 K-packed weight without dequantizing it first, or None where this
    path does not apply (`usable`). ``cfg``: (block_m, block_n, block_r, num_warps, num_stages)."""
    from engine.quant import triton_w4k_prefill as tp

    m = x.shape[0]
    bm, bn, br, warps, stages, *rest = cfg or config(g)
    if not usable(g, m, br):
        return None
    if x.stride(-1) != 1:
        x = x.contiguous()
    t = g.tensors
    y = x.new_empty(m, g.n)
    kw = {} if x.device.type == "cpu" else {"num_warps": warps, "num_stages": stages}
    tp.w4k_prefill_kernel[tp.grid(m, g.n, bm, bn)](
        x, t["w"], t["s"], t["b"], y, m, g.n, g.k, x.stride(0), y.stride(0),
        GROUP=g.group, BLOCK_M=bm, BLOCK_N=bn, BLOCK_R=br, ASM=gpu._asm(x), WIDE=bool(rest and rest[0]), **kw,
    )  # fmt: skip
    return y
