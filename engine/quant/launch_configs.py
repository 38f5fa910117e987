"""Which kernel and launch config a quantized matmul of a given shape and batch gets (`engine.quant.gpu`
launches it): a benchmark's ``TUNING``, else the table shipped for this GPU (`engine.quant.tuning`), else a
heuristic, each then made runnable for the weight's layout and the batch.

Why apart from the launcher: the configs are data with their own rules (which modes take which batches,
what a step must tile), tested on their own (tests/engine/quant/test_tuning.py, test_gpu_mma.py), while
the launcher only maps a config to a kernel's arguments.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from engine.quant import tuning

if TYPE_CHECKING:
    from engine.quant.gpu import GpuWeight

SMALL_M = 16
# (kind, N, K) -> (block_n, split, num_warps, num_stages[, block_m for one-token inputs[, gather
# [, block_k]]]); block_m 0 = the one-token GEMV with a 2-D accumulator; for int8 the "gather" slot says
# the magic-number conversion (`w8_kernel` MAGIC). int4k: (block_n, split, warps, stages, 0 | 2 = the
# CUDA-core GEMV for one token (2: gemv2, `w4k_gemv_kernel` ASM + ROW_SUMS; 3: gemv3, steps of block_r
# rows with per-row scales; 4 | 5: packed-fp16 multiply-adds, `w4k_gemv_h2_kernel`, 5 with the codes as
# fp16 subnormals, optionally followed by chain (words a column per fp16 sum, default 2), cols (column
# tiles sharing the activations, default 1) and prefetch (1: the next step's words load during this step's
# math; 2: its scales and biases too, and the first step's loads go before the absmax pass; 3: all of a
# program's steps load before its first step's math, where the splits get equal steps; `PREFETCH`,
# default 0); 4 | 5 also serve batches of 2-4 rows, keyed by that m, one
# fp16 FMA a row per code pair) | 16 = tensor cores (18: codes
# made as bf16 pairs, `w4k_mm2_kernel`, where a step stays in one group; 20: the same with the operands
# swapped, `w4k_mmt_kernel`), block_r word rows per step) | 6 = one token on tensor cores
# (`triton_w4k_mma`: block_n = cols x 32 x warps / kw, block_r = group // 8, kw warps splitting a
# program's groups at cfg[6], prefetch at cfg[8]; bf16 x).
# Set by the benchmarks (bench/quant_gpu.py kernels); the product reads the shipped `engine.quant.tuning`
TUNING: dict[tuple, tuple[int, ...]] = {}
# A config's PREFETCH slot (fp16 GEMV, cfg[8]) is obeyed up to this level; 0 turns it off everywhere, 1
# keeps level 1 where a config says 2 or 3 (bench A/B: quant_e2e's 'prefetch' and 'sbahead' switches)
H2_PREFETCH = 3


@functools.cache
def _sm_count() -> int:
    """The GPU's SMs: split-K aims at two programs an SM."""
    if not torch.cuda.is_available():
        return 132  # Triton's CPU interpreter (tests): any split is correct
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def _config(kind: str, n: int, k: int, group: int, m: int) -> tuple[int, ...]:
    """A config set by a benchmark (``TUNING``: key ``(kind, N, K, M)``, its bucket (M 1 or 16), or
    ``(kind, N, K)``), else the one shipped for this GPU (`engine.quant.tuning`), else a heuristic."""
    keys = ((kind, n, k, m), (kind, n, k, 1 if m == 1 else SMALL_M), (kind, n, k))
    hit = next((TUNING[key] for key in keys if key in TUNING), None)
    if hit is None:
        hit = tuning.lookup(kind, group if kind.startswith("int4") else 0, n, k, m)
    if hit is not None:
        return hit
    block_n = 64 if kind == "int4_24" or (kind == "int4k" and m == 1) else 128
    tiles = -(-n // block_n)
    chunks = k // group if kind != "int8" else -(-k // 128)
    split = max(1, min(chunks, round(2 * _sm_count() / tiles)))
    if kind == "int4k":  # the kernel that won every measured shape: gemv2 for one token, else the dots
        return (block_n, split, 4, 2, 2, 16) if m == 1 else (block_n, split, 4, 3, SMALL_M, 16)
    if kind == "int4_24":  # codes unpacked by a register reshape: per-value gathers (GATHER, the kernel's
        return block_n, split, 4, 3, SMALL_M, 0  # default) took 4.7-9.0x longer at one token on an H100
    if kind in ("int4", "int4_teal"):  # N-packed (TEAL): the same, 3.8-5.8x at one token on an H100, and
        return block_n, split, 4, 3, 1, 0  # batch 16 300.6 -> 1616.5 tok/s (RESULTS.md, 2026-12-07, fourth)
    return block_n, split, 4, 3


def _chunks(g: GpuWeight, cfg: tuple[int, ...], m: int) -> int:
    """Units of K that split-K hands out: groups, or ``block_r`` word rows for the K-packed GEMM."""
    if g.kind == "int4k" and cfg[4] == 6:
        return g.k // g.group
    if g.kind == "int4k" and (m > 1 or cfg[4] >= SMALL_M or cfg[4] in (3, 4, 5)):
        return g.k // 8 // cfg[5]
    return (g.k // g.group) if g.group else -(-g.k // 128)


def mma_warps_over_k(cfg: tuple[int, ...]) -> int:
    """A mode-6 config's warps that split a program's groups (``cfg[6]``; absent or 0: one)."""
    return max(1, cfg[6] if len(cfg) > 6 else 1)


def _int4k_config(
    g: GpuWeight, cfg: tuple[int, ...], m: int, bf16: bool = True
) -> tuple[tuple[int, ...] | None, tuple | None]:
    """``cfg`` made runnable for this shape and batch, and ``(chain, cols, prefetch)`` when it is the fp16
    GEMV (``cfg[8]``: PREFETCH, 1: the next step's words loaded during this step's math, 2: with its
    scales and biases, 3: every step ahead, capped at `H2_PREFETCH`).

    The fp16 GEMV (modes 4, 5) takes 1-4 rows, gemv3 (3) one; their steps must tile K and a chain must
    stay in a group, else gemv2 takes one token and the tensor cores a batch. A one-token config met by a
    batch (a table measured at fewer rows than it) goes to the tensor cores too; 5-16 rows always do.
    A tensor-core step of ``block_r`` word rows must tile K as well (the kernels do not mask rows): 16
    rows where the configured step does not, and None (dequantize, then GEMM) where K is not a
    multiple of 128, as in SmolLM2-135M (576) with group 64. The one-token tensor-core GEMV (6) needs
    one token, bf16 x where compiled (``bf16``), unpaneled rows and N a multiple of 16; else gemv2."""
    mode = cfg[4]
    if mode == 6:  # 1-2 column tiles of 32 a warp (warps over K: cfg[6]), group 64 or 128
        kw = mma_warps_over_k(cfg)
        cw = cfg[2] // kw
        cols = cfg[0] // (32 * max(cw, 1))
        fits = cw * kw == cfg[2] and cols in (1, 2) and cols * 32 * cw == cfg[0] and g.group in (64, 128)
        if m == 1 and bf16 and fits and g.n % 16 == 0 and not g.panel:
            return cfg, None
        cfg = (*cfg[:4], 2 if m == 1 else SMALL_M, 16)  # else gemv2 for one token, the dots for a batch
        mode = cfg[4]
    if (mode in (4, 5) and m <= 4) or (mode == 3 and m == 1):
        chain, cols = (cfg[6] if len(cfg) > 6 else 2, cfg[7] if len(cfg) > 7 else 1) if mode > 3 else (1, 1)
        prefetch = min(int(cfg[8]), int(H2_PREFETCH)) if len(cfg) > 8 else 0
        if not ((g.k // 8) % cfg[5] or cfg[5] % chain or (g.group // 8) % chain):
            return cfg, ((chain, cols, prefetch) if mode > 3 else None)
        if m == 1:
            return (*cfg[:4], 2, 16), None
        cfg = (*cfg[:4], SMALL_M, 16)
    elif m > 1 and mode < SMALL_M:
        cfg = (*cfg[:4], SMALL_M, 16)
    if cfg[4] >= SMALL_M and (g.k // 8) % cfg[5]:
        return ((*cfg[:5], 16) if (g.k // 8) % 16 == 0 else None), None
    return cfg, None


def _silu_in_gemv(g: GpuWeight, cfg: tuple[int, ...], h2: tuple | None, inter: int) -> bool:
    """Whether the GEMV of this config can write ``silu(gate) * up`` itself: the fp16 GEMV (``h2``) with
    two column tiles (gate's and up's columns) and one program over all of K (the config's split, as
    dispatched, is 1), on ``[gate | up]`` of equal halves that its tiles divide."""
    if cfg[4] == 6 and g.n == 2 * inter:  # tensor cores, one token: two tiles of 32 a column warp
        return cfg[0] == 64 * (cfg[2] // mma_warps_over_k(cfg)) and cfg[1] == 1 and inter % (cfg[0] // 2) == 0
    if h2 is None or h2[1] != 2 or g.n != 2 * inter:  # h2: 1-4 rows (`_int4k_config`)
        return False
    return cfg[1] == 1 and inter % (cfg[0] // 2) == 0
