"""The qkv projection's one-token GEMV finishing the attention's input itself: RoPE on its q and k columns,
k and v stored into the paged KV cache (`triton_w4k_h2` ``ROPE``; `gpu.matmul_small` ``rope``).

Why: at batch 1 the RoPE + KV-store kernel between the qkv GEMV and attention costs ~1.3 us a layer of an
8B model on an H100 (its launch and two L2 round trips behind PDL's waits, bench/RESULTS.md, the
``skiprope`` probe), ~41 us a decode step. The GEMV already holds every output value in registers.

How a program gets both halves of a rotation: rotate_half pairs dim ``d`` of a head with ``d + hd / 2``.
In this mode a program's two column tiles (``COLS`` 2, each ``BC`` wide) are dims ``[j, j + BC)`` of one
head and the same dims ``+ hd / 2`` (as ``SILU_MUL`` pairs gate's columns with up's), so it rotates what
it computed. The bits are those of `engine.fused_ops.rope_qk` on the GEMV's stored output: each sum
is cast to the model dtype as the plain GEMV stores it, then rounded op by op as that kernel does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from engine.fused_ops import _round


@triton.jit
def _mul(a, b, CUDA: tl.constexpr):
    """``a * b`` that the compiler may not fuse with a later add: the GEMV is compiled with FMA
    contraction (its scale and bias math), which would turn ``round(x * cos) + round(..)`` into an FMA
    that skips the product's rounding (`fused_ops.rope_qk` is compiled without it). ``mul.rn`` never
    contracts."""
    if CUDA:
        out = libdevice.mul_rn(a, b)
    else:
        out = a * b
    return out


@triton.jit
def rope_columns(pid, BC: tl.constexpr, HD: tl.constexpr):
    """Program ``pid``'s head and its dims ``d`` in the head's first half (``[j, j + BC)``); its column
    tiles are ``head * HD + d`` and the same dims of the second half."""
    PH: tl.constexpr = HD // 2 // BC  # programs a head
    head = pid // PH
    return head, (pid % PH) * BC + tl.arange(0, BC)


@triton.jit
def rope_store(lo, hi, m, head, d, QO, KC, VC, SLOTS, COS, SIN, NH: tl.constexpr, KVH: tl.constexpr,
               HD: tl.constexpr, CUDA: tl.constexpr):  # fmt: skip
    """Row ``m``'s finished columns of ``head``: ``lo`` at dims ``d`` of its first half, ``hi`` at the
    same dims of its second half, float32 sums. q heads: rotated into ``QO [rows, NH * HD]``; k heads:
    rotated into the cache row of the row's slot (``SLOTS[m]``, caches ``[blocks, block_size, KVH, HD]``);
    v heads: stored there as they are."""
    dt: tl.constexpr = QO.dtype.element_ty
    lo = lo.to(dt)  # as the plain GEMV stores its output (`triton_kernels._write_row`)
    hi = hi.to(dt)
    if head < NH + KVH:  # rotate: x * cos + rotate_half(x) * sin, rotate_half(x) = (-hi, lo)
        c_lo = tl.load(COS + m * HD + d).to(tl.float32)
        c_hi = tl.load(COS + m * HD + HD // 2 + d).to(tl.float32)
        s_lo = tl.load(SIN + m * HD + d).to(tl.float32)
        s_hi = tl.load(SIN + m * HD + HD // 2 + d).to(tl.float32)
        lo_f, hi_f = lo.to(tl.float32), hi.to(tl.float32)
        a = _round(_mul(lo_f, c_lo, CUDA), dt, CUDA).to(tl.float32)
        b = _round(_mul(-hi_f, s_lo, CUDA), dt, CUDA).to(tl.float32)
        a2 = _round(_mul(hi_f, c_hi, CUDA), dt, CUDA).to(tl.float32)
        b2 = _round(_mul(lo_f, s_hi, CUDA), dt, CUDA).to(tl.float32)
        lo = _round(a + b, dt, CUDA)
        hi = _round(a2 + b2, dt, CUDA)
    if head < NH:
        q = QO + m * NH * HD + head * HD + d
        tl.store(q, lo)
        tl.store(q + HD // 2, hi)
    else:
        slot = tl.load(SLOTS + m).to(tl.int64)
        if head < NH + KVH:
            k = KC + slot * KVH * HD + (head - NH) * HD + d
            tl.store(k, lo)
            tl.store(k + HD // 2, hi)
        else:
            v = VC + slot * KVH * HD + (head - NH - KVH) * HD + d
            tl.store(v, lo)
            tl.store(v + HD // 2, hi)


@dataclass
class RopeTarget:
    """Where the qkv GEMV's ``ROPE`` mode puts its results: the caches ``[blocks, block_size, kvh, hd]`` of
    the model dtype, each row's cache slot, and the rows' ``cos``/``sin`` ``[rows, hd]`` (model dtype)."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slots: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    nh: int
    kvh: int
    hd: int


def rope_fits(n: int, block_n: int, nh: int, kvh: int, hd: int) -> bool:
    """Whether a GEMV of ``block_n`` columns a program (two tiles of half) can finish a qkv output of
    ``n`` columns: q, k and v heads of ``hd`` dims, each tile inside one half of a head."""
    bc, odd = divmod(block_n, 2)
    return n == (nh + 2 * kvh) * hd and not odd and bc >= 1 and hd % 2 == 0 and (hd // 2) % bc == 0
