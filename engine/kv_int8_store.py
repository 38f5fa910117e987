"""One Triton launch per layer that stores new K and V rows into int8 paged caches (per-(block, head) scales).

Why: `attention.write_kv` does this in torch, ~15 small ops for K and as many for V, and in a prefill it
first groups tokens by block with ``torch.unique``, which waits for the GPU. That is 64 host-device syncs
and ~1,000 launches per prefill of a 32-layer model, so the host's time and the GPU's add up instead of
overlapping (int8-KV reuse turns took 60-95 ms on an H200 against 23-37 ms with bf16 KV, bench/RESULTS.md),
and the step cannot be captured in a CUDA graph. Here the grouping is known on the host already: the model
runner lists, per touched block, the chunk's first token, its count and its first slot (`store_plan`), and
one program per (block, head) rescales that block's rows and quantizes its new ones, for K and V.

The math is `attention.write_kv`'s, rounding for rounding: the block's scale becomes
``max(old, max|x| / 127)`` (old is ignored when the block's first slot is written now, a fresh block), its
existing rows are re-quantized by ``old / new`` and the new rows are ``round(x / new)`` clamped to 127;
rounding is to nearest even (``torch.round``) and divisions are correctly rounded, so the bytes and scales
are identical (tests/engine/test_kv_int8_store.py checks them against `write_kv` under the interpreter).
Decode steps (one token per block) need no plan: program ``p`` stores token ``p`` at ``slots[p]``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

ENABLED = True  # False: engines built afterwards store int8 KV with `attention.write_kv` (benchmarks' A/B)


@triton.jit
def _rint(v, CUDA: tl.constexpr):
    if CUDA:  # noqa: SIM108 (if/else blocks: the form compiled and tested on the H100)
        r = libdevice.rint(v)
    else:  # the interpreter: (v + 1.5 * 2**23) - 1.5 * 2**23 rounds |v| < 2**22 to nearest even in fp32
        r = (v + 12582912.0) - 12582912.0
    return r


@triton.jit
def _div(a, b, CUDA: tl.constexpr):
    if CUDA:  # noqa: SIM108
        r = tl.math.div_rn(a, b)
    else:
        r = a / b
    return r


@triton.jit
def _per_127(a, CUDA: tl.constexpr):
    # torch divides by a CPU scalar as a product with its fp32 reciprocal on CUDA, exactly on the CPU
    if CUDA:  # noqa: SIM108
        r = a * 0.007874015718698502  # fp32(1 / 127)
    else:
        r = a / 127.0
    return r


@triton.jit
def _store_one(X, sxt, sxh, C, S, scb, ssb, blk, h, t0, off0, cnt, kvh, BS: tl.constexpr,
               HD: tl.constexpr, CUDA: tl.constexpr):  # fmt: skip
    rows = tl.arange(0, BS)
    d = tl.arange(0, HD)
    new_row = (rows >= off0) & (rows < off0 + cnt)
    tok = (t0 + rows - off0).to(tl.int64)
    x = tl.load(X + tok[:, None] * sxt + h * sxh + d[None, :], mask=new_row[:, None], other=0.0)
    x = x.to(tl.float32)
    cand = _per_127(tl.max(tl.max(tl.abs(x), 1), 0), CUDA)
    sp = S + blk * ssb + h
    old = tl.load(sp)
    old = tl.where(off0 == 0, 0.0, old)
    new = tl.maximum(old, cand)
    ratio = tl.where(new > 0, _div(old, tl.maximum(new, 1e-12), CUDA), 0.0)
    cp = C + blk * scb + rows[:, None] * (kvh * HD) + h * HD + d[None, :]
    rescaled = _rint(tl.load(cp).to(tl.float32) * ratio, CUDA)
    q = _rint(_div(x, tl.maximum(new, 1e-12), CUDA), CUDA)
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(cp, tl.where(new_row[:, None], q, rescaled).to(tl.int8))
    tl.store(sp, new)


@triton.jit
def _store_kernel(K, V, KC, VC, KS, VS, PLAN, SLOTS, skt, skh, svt, svh, scb, ssb, kvh, BS: tl.constexpr,
                  HD: tl.constexpr, DECODE: tl.constexpr, CUDA: tl.constexpr):  # fmt: skip
    p = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    if DECODE:
        t0 = p
        cnt = 1
        slot0 = tl.load(SLOTS + p).to(tl.int64)
    else:
        t0 = tl.load(PLAN + 3 * p)
        cnt = tl.load(PLAN + 3 * p + 1)
        slot0 = tl.load(PLAN + 3 * p + 2)
    if cnt > 0:  # a graph's padding entries have no tokens
        blk = slot0 // BS
        off0 = slot0 % BS
        _store_one(K, skt, skh, KC, KS, scb, ssb, blk, h, t0, off0, cnt, kvh, BS, HD, CUDA)
        _store_one(V, svt, svh, VC, VS, scb, ssb, blk, h, t0, off0, cnt, kvh, BS, HD, CUDA)


def store_plan(chunks: list[tuple[int, int, int, list[int]]], block_size: int) -> list[int]:
    """Flat ``[t0, count, slot0]`` per block touched by the step's new tokens, from each sequence's
    ``(first row in the step, first position, token count, block table)``."""
    plan: list[int] = []
    for row, start, n, table in chunks:
        p, end = start, start + n
        while p < end:
            off = p % block_size
            cnt = min(block_size - off, end - p)
            plan += [row + p - start, cnt, table[p // block_size] * block_size + off]
            p += cnt
    return plan


def plan_entries(tokens: int, block_size: int) -> int:
    """The most plan entries one sequence's chunk of ``tokens`` can touch (a graph's fixed plan size)."""
    return (tokens + block_size - 2) // block_size + 1


def supported(k_cache: torch.Tensor) -> bool:
    """Whether the kernel can store into this cache: int8 blocks ``[block, kvh, hd]`` laid out densely
    (the blocks themselves may be strided: the runner keeps each block's scales after its rows) with
    power-of-two block and head dims."""
    _, bs, kvh, hd = k_cache.shape
    pow2 = (bs & (bs - 1)) == 0 and (hd & (hd - 1)) == 0
    dense = k_cache.stride()[1:] == (kvh * hd, hd, 1)
    return k_cache.dtype == torch.int8 and dense and pow2


def store_kv_int8(
    k: torch.Tensor,
    v: torch.Tensor,
    caches: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    plan: torch.Tensor | None,
    slots: torch.Tensor,
) -> None:
    """Store ``k``/``v [T, kvh, hd]`` into ``caches = (k_cache, v_cache, k_scale, v_scale)``, the two
    caches of one layout (`supported`). ``plan``: int64 ``[blocks, 3]`` from `store_plan`; ``None`` for a
    decode step, where each token has its own block and lands at ``slots[t]``."""
    kc, vc, ks, vs = caches
    t, kvh, hd = k.shape
    if not (
        supported(kc) and vc.stride() == kc.stride() and ks.stride() == vs.stride() and ks.stride(1) == 1
    ):
        raise ValueError("store_kv_int8: K and V caches need one dense block layout, scales one per head")
    if k.stride(2) != 1:
        k = k.contiguous()
    if v.stride(2) != 1:
        v = v.contiguous()
    programs = t if plan is None else plan.shape[0]
    if programs == 0:
        return
    _store_kernel[(programs, kvh)](
        k, v, kc, vc, ks, vs, slots if plan is None else plan, slots, k.stride(0), k.stride(1), v.stride(0),
        v.stride(1), kc.stride(0), ks.stride(0), kvh, BS=kc.shape[1], HD=hd, DECODE=plan is None,
        CUDA=os.environ.get("TRITON_INTERPRET") != "1", num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
