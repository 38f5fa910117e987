"""The residual add + RMSNorm ahead of a one-token int4 GEMV, computed by the GEMV itself.

Why: at batch 1 a decode layer's norms are kernels of one program each. Their work is nothing (8 KB), but
each one is a hand-over in the step's chain of kernels: the GEMV behind it can only start its math once the
norm has launched, waited for the kernel ahead, loaded, reduced, stored and finished. With ``NORM`` the fp16
GEMV (`engine.quant.triton_w4k_h2`) takes the sublayer's output ``x``, the residual stream and the norm's
weight instead of the normed row:

- its prologue (after PDL's wait; its first weights are already in flight) loads the three full rows, forms
  ``h = x + residual`` (the new residual stream, stored by program 0), its ``rstd`` and the absmax of the
  normed row (the fp16 scale's input, `triton_w4k_h2` ``AMAX_IN``);
- its K loop then reads ``x``, the residual and the weight where it read the normed row, and normalises
  each value as `engine.fused_ops.add_rmsnorm` does (the same helpers: `fused_ops.rstd_of_squares`,
  `fused_ops.rms_scale`).

Every program repeats the prologue's 24 KB of L2 reads; that is the price of having no kernel between.
Under ``TRITON_INTERPRET=1`` the results are the two kernels' bits (numpy sums the squares in one order);
compiled, the sum of squares is reduced over the GEMV's warps, so ``rstd`` may differ from the norm
kernel's by an fp32 ulp and a normed value by a bf16 ulp.
"""

from __future__ import annotations

import triton
import triton.language as tl

from engine.fused_ops import _round, rms_scale, rstd_of_squares, squares


@triton.jit
def norm_prologue(x_ptr, res_ptr, nw_ptr, rout_ptr, K, eps, inv_k, store, BLOCK: tl.constexpr,
                  CUDA: tl.constexpr):  # fmt: skip
    """``(rstd, absmax of the normed row)`` of ``w * rmsnorm(x + residual)`` (bf16 rows of ``K``); where
    ``store``, ``x + residual`` rounded to bf16 goes to ``rout_ptr`` (the residual stream after the add).
    ``BLOCK`` values at a time, two passes (squares, then the absmax, reloading from L1): a whole 4096-row
    held at once, beside the weights the GEMV has in flight, took qkv's program from 74 to 112 registers
    (2 programs an SM instead of 3). With ``BLOCK`` >= K (the interpreter's, `norm_block`) the squares are
    summed as the norm kernel sums them."""
    offs = tl.arange(0, BLOCK)
    sq = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        m = k0 + offs < K
        x = tl.load(x_ptr + k0 + offs, mask=m, other=0.0)
        r = tl.load(res_ptr + k0 + offs, mask=m, other=0.0)
        h = _round(x.to(tl.float32) + r.to(tl.float32), tl.bfloat16, CUDA)
        tl.store(rout_ptr + k0 + offs, h, mask=m & store)
        sq += squares(h.to(tl.float32), CUDA)  # one pass (BLOCK >= K): 0 + each square, exact
    rstd = rstd_of_squares(sq, K, eps, inv_k, CUDA)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        m = k0 + offs < K
        x = tl.load(x_ptr + k0 + offs, mask=m, other=0.0)
        r = tl.load(res_ptr + k0 + offs, mask=m, other=0.0)
        hf = _round(x.to(tl.float32) + r.to(tl.float32), tl.bfloat16, CUDA).to(tl.float32)
        w = tl.load(nw_ptr + k0 + offs, mask=m, other=0.0)
        amax = tl.maximum(amax, tl.abs(rms_scale(hf, rstd, w, tl.bfloat16, tl.bfloat16, CUDA).to(tl.float32)))
    return rstd, tl.max(amax, axis=0)


@triton.jit
def _half(word, half: tl.constexpr):
    """The bf16 value in half ``half`` (0: low) of an int32 word, as float32."""
    return ((word << 16) if half == 0 else (word & -65536)).to(tl.float32, bitcast=True)


@triton.jit
def _pair(xw, rw, ww, rstd, CUDA: tl.constexpr):
    """The two normed values of one int32 word each of x, the residual and the weight (bf16 pairs)."""
    out = ()
    for half in tl.static_range(2):
        h = _round(_half(xw, half) + _half(rw, half), tl.bfloat16, CUDA).to(tl.float32)
        out = out + (rms_scale(h, rstd, _half(ww, half), tl.bfloat16, tl.bfloat16, CUDA).to(tl.float32),)
    return out


@triton.jit
def x8_norm(x_ptr, res_ptr, nw_ptr, rows, rstd, CUDA: tl.constexpr):
    """`triton_w4k_h2._x8` of the normed row: values ``8 * rows + i``, i = 0..7, as float32, each from four
    int32 loads (two bf16 values a load) of x, the residual and the weight."""
    i32 = tl.pointer_type(tl.int32)
    out = ()
    for m in tl.static_range(4):
        xw = tl.load(x_ptr.to(i32) + rows * 4 + m)
        rw = tl.load(res_ptr.to(i32) + rows * 4 + m)
        ww = tl.load(nw_ptr.to(i32) + rows * 4 + m)
        out = out + _pair(xw, rw, ww, rstd, CUDA)
    return out


def norm_block(k: int, compiled: bool) -> int:
    """The prologue's tile: compiled, 1024 values (registers, `norm_prologue`); interpreted, the whole row, as
    the norm kernel (`engine.fused_ops`) takes it, so that the two sum the squares alike."""
    return min(1024, triton.next_power_of_2(k)) if compiled else triton.next_power_of_2(k)
