"""Fused Triton kernels for the decoder's elementwise work on CUDA: residual add + RMSNorm, RoPE, SiLU * up.

Why: in eager torch a decode step spends ~45 tiny kernels per layer on this work (RMSNorm alone is ~7 ops,
RoPE ~10, ``silu(g) * u`` 2, plus the residual adds). Inside a CUDA graph each launch still costs ~1.5 us,
about 2 ms per token on a 32-layer model, more than some of the matmuls. These kernels do the same work in
four launches per layer (``add_rmsnorm`` twice, ``rope_qk``, ``silu_mul``).

Numerics follow the torch code in engine/model.py op by op, rounding to the model dtype wherever a torch op
on bf16/fp16 tensors would: the residual sum, ``(x * rstd).to(dtype)`` and its product with the weight,
``q * cos`` and ``rotate_half(q) * sin`` and their sum, ``silu(g)`` (computed in fp32) and its product with
``u``. So RoPE, SiLU * up and the residual add are bit-identical to torch; RMSNorm differs only where torch
sums the squares in another order (an fp32 ulp in the statistic, rarely a bf16 ulp in the output). On CUDA
the kernels use correctly rounded division and libdevice ``exp`` (as torch's CUDA kernels do) and are
compiled without FMA contraction, which would fuse a product into the following sum and so skip the
rounding in between; under ``TRITON_INTERPRET=1`` (CI, CPU tensors) numpy's equivalents run. The CPU path
of engine/model.py does not call this module. On Hopper each kernel launches with PDL (`engine.pdl`): it
lets the next kernel launch at once, then waits for the previous one before reading anything.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from engine import pdl

__all__ = ["add_rmsnorm", "rmsnorm", "row_amax", "rope_qk", "silu_mul", "stores_kv"]

# The attribute under which a norm's output carries its rows' absmax. The one-token int4 GEMV fits a
# power-of-two scale to it (engine.quant.triton_w4k_h2, AMAX_IN); without it, each of the GEMV's programs
# reduces its K slice of x before its first weight load (~0.3-0.6 us on qkv and gate_up, measured). The
# norm has the row in registers already, so the max costs it one reduction and one store.
ROW_AMAX = "kb_row_amax"


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _round(x, dt: tl.constexpr, CUDA: tl.constexpr):
    """fp32 -> ``dt``, rounding to nearest even. Triton 3.6's interpreter truncates fp32 -> bf16, so under it
    bf16 is rounded by hand on the bits (exact for finite values); compiled, this is the plain conversion."""
    if not CUDA and dt == tl.bfloat16:
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        x = b.to(tl.float32, bitcast=True)
    return x.to(dt)


@triton.jit
def _rmsnorm_kernel(X, R, W, OUT, ROUT, AMAX, sx, sr, so, sro, n, eps, inv_n,
                    HAS_RES: tl.constexpr, CUDA: tl.constexpr, BLOCK: tl.constexpr, HAS_AMAX: tl.constexpr,
                    PDL: tl.constexpr = False):  # fmt: skip
    pdl.start(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(X + row * sx + offs, mask=m, other=0.0)
    if HAS_RES:  # new residual = x + residual, rounded to the model dtype like torch's add
        r = tl.load(R + row * sr + offs, mask=m, other=0.0)
        x = _round(x.to(tl.float32) + r.to(tl.float32), ROUT.dtype.element_ty, CUDA)
        tl.store(ROUT + row * sro + offs, x, mask=m)
    xf = x.to(tl.float32)
    ss = tl.sum(xf * xf, axis=0)
    var = ss * inv_n if CUDA else ss / n  # torch's CUDA mean multiplies by 1/n; its CPU mean is sum / n
    rstd = tl.math.rsqrt(var + eps)
    normed = _round(xf * rstd, X.dtype.element_ty, CUDA)
    w = tl.load(W + offs, mask=m, other=0.0)
    out = _round(w.to(tl.float32) * normed.to(tl.float32), OUT.dtype.element_ty, CUDA)
    tl.store(OUT + row * so + offs, out, mask=m)
    if HAS_AMAX:  # of the stored values (masked lanes are 0)
        tl.store(AMAX + row, tl.max(tl.abs(out.to(tl.float32)), axis=0))


def _norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, row_amax: bool):
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    n = x2.shape[1]
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if residual is not None:
        r2 = residual.reshape(-1, n)
        if r2.stride(1) != 1:
            r2 = r2.contiguous()
        rout = torch.empty_like(x2, memory_format=torch.contiguous_format)
    else:
        r2 = rout = x2  # unused
    amax = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device) if row_amax else out
    if x2.shape[0] > 0:
        strides = (x2.stride(0), r2.stride(0), out.stride(0), rout.stride(0))
        _rmsnorm_kernel[(x2.shape[0],)](
            x2, r2, weight, out, rout, amax, *strides, n, eps, 1.0 / n,
            HAS_RES=residual is not None, CUDA=not _interpreted(), BLOCK=triton.next_power_of_2(n),
            HAS_AMAX=row_amax, num_warps=4 if n <= 2048 else 8, enable_fp_fusion=False, **pdl.kwargs(x2),
        )  # fmt: skip
    out = out.view(shape)
    if row_amax:
        setattr(out, ROW_AMAX, amax)
    return out if residual is None else (out, rout.view(shape))


def row_amax(x: torch.Tensor) -> torch.Tensor | None:
    """``max |x|`` of each row (float32 ``[rows]``) where ``x`` came from a norm asked for it, else None."""
    return getattr(x, ROW_AMAX, None)


def add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, row_amax: bool = False
):
    """``(weight * rmsnorm(x + residual), x + residual)`` in one kernel (engine.model.RMSNorm's numerics);
    ``row_amax``: the output also carries each row's ``max |out|`` (`row_amax`)."""
    return _norm(x, residual, weight, eps, row_amax)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, row_amax: bool = False) -> torch.Tensor:
    """``weight * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype)``, one program per row."""
    return _norm(x, None, weight, eps, row_amax)


@triton.jit
def _rope_heads(
    X, OUT, C, S, t, sxt, sxh, nheads, hd, CUDA: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr
):
    """``round(round(x * cos) + round(rotate_half(x) * sin))`` for every head of token ``t``; returns the
    result with its head and dim indices and mask, for the caller's cache write."""
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    half = hd // 2
    m = (h < nheads) & (d < hd)
    partner = tl.where(d < half, d + half, d - half)
    base = X + t * sxt + h * sxh
    x = tl.load(base + d, mask=m, other=0.0)
    xp = tl.load(base + partner, mask=m, other=0.0)
    dm = tl.arange(0, BLOCK_D) < hd
    c = tl.load(C + t * hd + tl.arange(0, BLOCK_D), mask=dm, other=0.0)[None, :]
    s = tl.load(S + t * hd + tl.arange(0, BLOCK_D), mask=dm, other=0.0)[None, :]
    out = rope_math(x, xp, c, s, d < half, OUT.dtype.element_ty, CUDA)
    tl.store(OUT + t * nheads * hd + h * hd + d, out, mask=m)
    return out, h, d, m


@triton.jit
def rope_math(x, xp, c, s, first_half, dt: tl.constexpr, CUDA: tl.constexpr):
    """``round(round(x * c) + round(rotate_half(x) * s))`` in ``dt``, ``xp`` being each value's partner
    in the other half of its head (``first_half``: where rotate_half negates it). The products are
    correctly rounded (``mul_rn``, compiled) so that no kernel's FMA contraction can fuse one into the sum:
    the paged attention kernel applies RoPE with contraction on (`engine.paged_attn_triton`, ``ROPE``)."""
    rot = tl.where(first_half, -xp.to(tl.float32), xp.to(tl.float32))  # rotate_half: cat(-x2, x1)
    if CUDA:
        a = _round(libdevice.mul_rn(x.to(tl.float32), c.to(tl.float32)), dt, CUDA)
        b = _round(libdevice.mul_rn(rot, s.to(tl.float32)), dt, CUDA)
    else:
        a = _round(x.to(tl.float32) * c.to(tl.float32), dt, CUDA)
        b = _round(rot * s.to(tl.float32), dt, CUDA)
    return _round(a.to(tl.float32) + b.to(tl.float32), dt, CUDA)


@triton.jit
def _rope_kernel(Q, K, V, QO, KO, KC, VC, SLOTS, C, S, sqt, sqh, skt, skh, svt, svh, nh, kvh, hd,
                 CUDA: tl.constexpr, CACHE: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                 BLOCK_D: tl.constexpr, PDL: tl.constexpr = False):  # fmt: skip
    pdl.start(PDL)
    t = tl.program_id(0).to(tl.int64)
    _rope_heads(Q, QO, C, S, t, sqt, sqh, nh, hd, CUDA, BLOCK_HQ, BLOCK_D)
    k, h, d, m = _rope_heads(K, KO, C, S, t, skt, skh, kvh, hd, CUDA, BLOCK_HK, BLOCK_D)
    if CACHE:  # the token's K and V rows into its paged-cache slot, as `attention.write_kv` stores them
        row = tl.load(SLOTS + t).to(tl.int64) * kvh * hd + h * hd + d
        tl.store(KC + row, k, mask=m)
        tl.store(VC + row, tl.load(V + t * svt + h * svh + d, mask=m, other=0.0), mask=m)


def stores_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether `rope_qk` can store K and V into these caches: contiguous and of the model dtype (an int8
    cache rescales whole blocks on a write, `attention.write_kv`)."""
    return k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.dtype == v_cache.dtype == dtype


def rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: tuple | None = None
):
    """RoPE on ``q [T, nh, hd]`` and ``k [T, kvh, hd]`` (strided views are fine) with ``cos``/``sin``
    ``[T, 1, hd]`` in the model dtype, as ``x * cos + rotate_half(x) * sin``; returns new contiguous q, k
    (writing in place would race: a head's two halves are read and written by different threads).

    ``cache = (k_cache, v_cache, slots, v)``: also store the rotated K and ``v [T, kvh, hd]`` at ``slots``
    of the contiguous ``[blocks, block_size, kvh, hd]`` caches of k's dtype (bf16/fp16 KV; int8 KV
    rescales whole blocks, `attention.write_kv`). Why here: two index_put launches fewer per layer, ~6%
    of an int4 decode step of an 8B model (bench/RESULTS.md)."""
    t, nh, hd = q.shape
    kvh = k.shape[1]
    if q.stride(2) != 1:
        q = q.contiguous()
    if k.stride(2) != 1:
        k = k.contiguous()
    cos, sin = cos.reshape(t, hd).contiguous(), sin.reshape(t, hd).contiguous()
    qo = torch.empty((t, nh, hd), dtype=q.dtype, device=q.device)
    ko = torch.empty((t, kvh, hd), dtype=k.dtype, device=k.device)
    kc, vc, slots, v = cache if cache is not None else (ko, ko, ko, ko)
    if cache is not None:
        if not (stores_kv(kc, vc, k.dtype) and v.dtype == k.dtype):
            raise ValueError("rope_qk writes only contiguous caches of the model dtype")
        if v.stride(2) != 1:
            v = v.contiguous()
    if t > 0:
        _rope_kernel[(t,)](
            q, k, v, qo, ko, kc, vc, slots, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            v.stride(0), v.stride(1), nh, kvh, hd, CUDA=not _interpreted(), CACHE=cache is not None,
            BLOCK_HQ=triton.next_power_of_2(nh), BLOCK_HK=triton.next_power_of_2(kvh),
            BLOCK_D=triton.next_power_of_2(hd), num_warps=4, enable_fp_fusion=False, **pdl.kwargs(q),
        )  # fmt: skip
    return qo, ko


@triton.jit
def _silu_mul_kernel(GU, OUT, sg, so, inter, CUDA: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr = False):  # fmt: skip
    pdl.start(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < inter
    g = tl.load(GU + row * sg + offs, mask=m, other=0.0)
    u = tl.load(GU + row * sg + inter + offs, mask=m, other=0.0)
    tl.store(OUT + row * so + offs, silu_mul_math(g, u, OUT.dtype.element_ty, CUDA), mask=m)


@triton.jit
def silu_mul_math(g, u, dt: tl.constexpr, CUDA: tl.constexpr):
    """``silu(g) * u`` in ``dt`` from ``g`` and ``u`` held in ``dt``, rounded as torch rounds it; shared
    with the int4 GEMV that writes it itself (`engine.quant.triton_w4k_h2`, ``SILU_MUL``), so the two
    paths give the same bits."""
    g = g.to(tl.float32)
    if CUDA:  # torch's CUDA silu: x / (1 + expf(-x)), IEEE division
        e = libdevice.exp(-g)
        s = tl.math.div_rn(g, 1.0 + e)
    else:
        s = g / (1.0 + tl.exp(-g))
    return _round(_round(s, dt, CUDA).to(tl.float32) * u.to(tl.float32), dt, CUDA)


def silu_mul(gu: torch.Tensor, inter: int) -> torch.Tensor:
    """``silu(gate) * up`` for ``gu = [gate | up]`` of shape ``[T, 2 * inter]`` (rounding as torch does)."""
    gu2 = gu.reshape(-1, gu.shape[-1])
    if gu2.stride(1) != 1:
        gu2 = gu2.contiguous()
    out = torch.empty((gu2.shape[0], inter), dtype=gu.dtype, device=gu.device)
    block = min(1024, triton.next_power_of_2(inter))
    if gu2.shape[0] > 0:
        _silu_mul_kernel[(gu2.shape[0], triton.cdiv(inter, block))](
            gu2, out, gu2.stride(0), out.stride(0), inter,
            CUDA=not _interpreted(), BLOCK=block, num_warps=4, enable_fp_fusion=False, **pdl.kwargs(gu2),
        )  # fmt: skip
    return out.view(*gu.shape[:-1], inter)
