"""What the packed-fp16 one-token GEMV (`engine.quant.triton_w4k_h2`) loads: a step's weight words, scales
and biases, and its activations, with their absmax and the power-of-two scale fitted to it.

Why apart: the kernel decides *when* each load issues (a step ahead, all before PDL's wait, x out of the
math); these helpers only say *what* a load reads and how x becomes float32, so each option reuses them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _x8(x_ptr, rows):
    """``x[8 * rows + i]``, i = 0..7, as float32; bf16 as four int32 loads of two (a shift or a mask each
    to float32 either way): half the load instructions (the dispatch keeps x 4-byte aligned)."""
    return _x8_f32(_x8_raw(x_ptr, rows), x_ptr.dtype.element_ty == tl.bfloat16)


@triton.jit
def _x8_raw(x_ptr, rows, ok=True):
    """`_x8`'s loads alone: four int32 words of two bf16 values, else the eight values. ``ok`` False: no
    loads (a step past the program's last, `_x_words`)."""
    out = ()
    if x_ptr.dtype.element_ty == tl.bfloat16:
        for m in tl.static_range(4):  # x[2m], x[2m + 1]
            out = out + (tl.load(x_ptr.to(tl.pointer_type(tl.int32)) + rows * 4 + m, mask=ok, other=0),)
    else:
        for i in tl.static_range(8):
            out = out + (tl.load(x_ptr + rows * 8 + i, mask=ok, other=0.0),)
    return out


@triton.jit
def _x8_f32(raw, BF16: tl.constexpr):
    """`_x8_raw`'s words as the eight float32 values."""
    out = ()
    if BF16:
        for m in tl.static_range(4):
            w2 = raw[m]
            out = out + ((w2 << 16).to(tl.float32, bitcast=True), (w2 & -65536).to(tl.float32, bitcast=True))
    else:
        for i in tl.static_range(8):
            out = out + (raw[i].to(tl.float32),)
    return out


@triton.jit
def _xa_amax(xa, m, CHUNKS: tl.constexpr, M_ROWS: tl.constexpr, NW: tl.constexpr):
    """``max |x|`` of row ``m`` over the words `_x_words` loaded for ``CHUNKS`` (steps x chain) word rows:
    what `_h2_scale`'s pass over the same K slice finds (a max is exact in any order)."""
    am = tl.zeros(xa[0].shape, dtype=tl.float32)
    for c in tl.static_range(CHUNKS):
        raw = ()
        for i in tl.static_range(NW):
            raw = raw + (xa[(c * M_ROWS + m) * NW + i],)
        x8 = _x8_f32(raw, NW == 4)
        for i in tl.static_range(8):
            am = tl.maximum(am, tl.abs(x8[i]))
    return tl.max(am, axis=0)


@triton.jit
def _x_words(xr, r, rr, CHAIN: tl.constexpr, M_ROWS: tl.constexpr, ok=True):
    """A step's x loads for every row of x (``X_AHEAD``), flat: chain position ``p``, then row ``m``, then
    `_x8_raw`'s words."""
    out = ()
    for p in tl.static_range(CHAIN):
        for m in tl.static_range(M_ROWS):
            out = out + _x8_raw(xr[m], r + rr + p, ok)
    return out


@triton.jit
def _h2_scale(x_ptr, lo, hi, TX: tl.constexpr, LCU: tl.constexpr):
    """``v``, the power of two with ``max |x[lo:hi]| * v`` in ``[2**(TX - 1), 2**TX)``, and ``2**LCU / v``,
    from the exponent bits of the absmax: exact, where ``exp2(-log2(.))`` may round. 2048 values a pass, as
    each pass waits for its loads (an L2 round trip) before the main loop can start."""
    ar, amax = tl.arange(0, 2048), tl.zeros((2048,), dtype=tl.float32)
    for k in range(lo, hi, 2048):
        amax = tl.maximum(amax, tl.abs(tl.load(x_ptr + k + ar, mask=k + ar < hi, other=0.0).to(tl.float32)))
    return _h2_scale_of(tl.max(amax, axis=0), TX, LCU)


@triton.jit
def _h2_scale_of(amax, TX: tl.constexpr, LCU: tl.constexpr):
    """`_h2_scale` from a given absmax (``AMAX_IN``: the row's, computed before the kernel)."""
    e = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    e = tl.minimum(tl.maximum(e, TX), 230)  # both results stay normal floats
    v = ((TX + 253 - e) << 23).to(tl.float32, bitcast=True)
    return v, ((e + 1 - TX + LCU) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _h2_words(w_ptr, r, rr, colv, wb, N, RS, CHAIN: tl.constexpr, COLS: tl.constexpr, EVEN: tl.constexpr,
              ok=True):  # fmt: skip
    """A step's weight words, ``CHAIN x COLS`` tiles, tile ``c`` at the columns ``colv[c]``, their words
    at ``wb[c]`` in the first row, rows ``RS`` words apart (`triton_w4k.panel_offsets`; EVEN, N a multiple
    of BLOCK_N: a true mask, folded away, so no zeroing of the lanes). ``ok`` False: no loads (the step
    after a program's last)."""
    words = ()
    for p in tl.static_range(CHAIN):
        for c in tl.static_range(COLS):
            ptrs = w_ptr + (r + rr + p)[:, None] * RS + wb[c][None, :]
            mask = ((colv[c] < N) | EVEN)[None, :] & ok
            words = words + (tl.load(ptrs, mask=mask, other=0),)
    return words


@triton.jit
def _h2_sb(s_ptr, b_ptr, r, rr, colv, sbb, N, RS, GROUP: tl.constexpr, COLS: tl.constexpr,
           EVEN: tl.constexpr, ok=True):  # fmt: skip
    """A step's scales and biases (fp16, per row of the step's tiles), ``s, b`` per column tile, laid out
    as the words (`_h2_words`: ``sbb``, ``RS``). ``ok`` False: no loads (the step after a program's
    last)."""
    sbs = ()
    for c in tl.static_range(COLS):
        sb = ((r + rr) * 8 // GROUP)[:, None] * RS + sbb[c][None, :]
        mask = ((colv[c] < N) | EVEN)[None, :] & ok
        sbs = sbs + (tl.load(s_ptr + sb, mask=mask, other=0.0), tl.load(b_ptr + sb, mask=mask, other=0.0))
    return sbs
