"""The one-token int4 GEMV with packed-fp16 multiply-adds (sweep modes 4 and 5), on the K-packed layout of
`engine.quant.triton_w4k` (``w [K // 8, N]`` int32, 8 codes of one column a word).

Why a second GEMV: the float32 ones (gemv2/gemv3) spend about 4.8 SASS instructions a weight (a ``lop3``, the
magic-number add and an FFMA a code, plus activation work), so the 132 SMs of an H200 cannot issue fast
enough to read int4 at HBM speed (bench/RESULTS.md). Two codes in one f16x2 word cost a ``lop3``, a
``sub.f16x2`` and an ``fma.f16x2``: about 2.2-2.5 instructions a weight by `bench/sass_count.py`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from engine import pdl
from engine.fused_ops import silu_mul_math
from engine.quant.triton_kernels import _finish_split, _write_row
from engine.quant.triton_w4k import panel_offsets

# The packed-fp16 step of `w4k_gemv_h2_kernel`: ``$0 = codes($1 & $2) * $3 + $4`` on f16x2 words. OFFSET
# ORs the nibbles under 1024.0 (0x6400, whose ulp is 1) and subtracts it; DENORM reads them as subnormals.
H2_OFFSET = tl.constexpr(
    "{ .reg .b32 t, k; mov.b32 k, 0x64006400; lop3.b32 t, $1, $2, k, 0xEA; sub.f16x2 t, t, k; "
    "fma.rn.f16x2 $0, t, $3, $4; }"
)
H2_DENORM = tl.constexpr("{ .reg .b32 t; and.b32 t, $1, $2; fma.rn.f16x2 $0, t, $3, $4; }")
# The code pair alone (``$0 = codes($1 & $2)``), for several rows (`_h2_codes`, `_h2_fma_row`).
H2_OFFSET_CODES = tl.constexpr(
    "{ .reg .b32 k; mov.b32 k, 0x64006400; lop3.b32 $0, $1, $2, k, 0xEA; sub.f16x2 $0, $0, k; }"
)
H2_DENORM_CODES = tl.constexpr("and.b32 $0, $1, $2;")


@triton.jit
def _h2_fma(src, xp, acc, j: tl.constexpr, DENORM: tl.constexpr, ASM: tl.constexpr):
    """``acc += (q_lo, q_hi) * xp`` in fp16 for the nibbles at bits ``4j`` and ``16 + 4j`` of ``src`` (j = 0,
    1), the codes made exact fp16 ``q * 16**j`` (DENORM: times 2**-24) by the mask alone. Without ``ASM``
    (the interpreter) the same roundings with plain ops: exact products in float32, each sum to fp16."""
    if ASM:
        mask = tl.full(src.shape, 0x000F000F << (4 * j), tl.int32)
        asm: tl.constexpr = H2_DENORM if DENORM else H2_OFFSET
        out = tl.inline_asm_elementwise(
            asm, "=r,r,r,r,r", [src, mask, xp[:, None], acc], dtype=tl.int32, is_pure=True, pack=1
        )
    else:
        unit: tl.constexpr = (1 << (4 * j)) / (16777216.0 if DENORM else 1.0)
        codes = tl.join((src >> (4 * j)) & 0xF, (src >> (16 + 4 * j)) & 0xF).to(tl.float32) * unit
        out = (codes * xp[:, None, :] + acc).to(tl.float16).to(tl.float32)
    return out


@triton.jit
def _h2_codes(src, j: tl.constexpr, DENORM: tl.constexpr, ASM: tl.constexpr):
    """The code pair of `_h2_fma` alone (``lop3`` + ``sub.f16x2``, DENORM: ``and``), for `_h2_fma_row` to
    multiply into several rows' accumulators: made once a weight pair, not once a row."""
    if ASM:
        mask = tl.full(src.shape, 0x000F000F << (4 * j), tl.int32)
        asm: tl.constexpr = H2_DENORM_CODES if DENORM else H2_OFFSET_CODES
        out = tl.inline_asm_elementwise(asm, "=r,r,r", [src, mask], dtype=tl.int32, is_pure=True, pack=1)
    else:
        unit: tl.constexpr = (1 << (4 * j)) / (16777216.0 if DENORM else 1.0)
        out = tl.join((src >> (4 * j)) & 0xF, (src >> (16 + 4 * j)) & 0xF).to(tl.float32) * unit
    return out


@triton.jit
def _h2_fma_row(codes, xp, acc, ASM: tl.constexpr):
    """``acc += codes * xp`` for one row: an ``fma.rn.f16x2`` (the interpreter: exact products in float32,
    each sum rounded to fp16, as `_h2_fma`)."""
    if ASM:
        out = tl.inline_asm_elementwise(
            "fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r", [codes, xp[:, None], acc], dtype=tl.int32,
            is_pure=True, pack=1,
        )  # fmt: skip
    else:
        out = (codes * xp[:, None, :] + acc).to(tl.float16).to(tl.float32)
    return out


@triton.jit
def _h2_xpair(xl, xh, ASM: tl.constexpr):
    """``(xl, xh)`` rounded to fp16: one ``cvt.rn.f16x2.f32`` to an f16x2 word, or a trailing pair axis."""
    if ASM:
        out = tl.inline_asm_elementwise(
            "cvt.rn.f16x2.f32 $0, $2, $1;", "=r,f,f", [xl, xh], dtype=tl.int32, is_pure=True, pack=1
        )
    else:
        out = tl.join(xl, xh).to(tl.float16).to(tl.float32)
    return out


@triton.jit
def _h2_sum(acc, ASM: tl.constexpr):
    """The two fp16 halves of each accumulator, summed in float32."""
    if ASM:
        lo, hi = tl.inline_asm_elementwise(
            "mov.b32 {$0, $1}, $2;", "=h,=h,r", [acc], dtype=(tl.float16, tl.float16), is_pure=True, pack=1
        )
    else:
        lo, hi = tl.split(acc)
    return lo.to(tl.float32) + hi.to(tl.float32)


@triton.jit
def _x8(x_ptr, rows):
    """``x[8 * rows + i]``, i = 0..7, as float32; bf16 as four int32 loads of two (a shift or a mask each
    to float32 either way): half the load instructions (the dispatch keeps x 4-byte aligned)."""
    out = ()
    if x_ptr.dtype.element_ty == tl.bfloat16:
        for m in tl.static_range(4):
            w2 = tl.load(x_ptr.to(tl.pointer_type(tl.int32)) + rows * 4 + m)  # x[2m], x[2m + 1]
            out = out + ((w2 << 16).to(tl.float32, bitcast=True), (w2 & -65536).to(tl.float32, bitcast=True))
    else:
        for i in tl.static_range(8):
            out = out + (tl.load(x_ptr + rows * 8 + i).to(tl.float32),)
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
def w4k_gemv_h2_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, N, K, rows_per_split, stride_xm, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT: tl.constexpr,
    ASM: tl.constexpr, DENORM: tl.constexpr, CHAIN: tl.constexpr, COLS: tl.constexpr, EVEN: tl.constexpr,
    M_ROWS: tl.constexpr, PDL: tl.constexpr = False, amax_ptr=None, AMAX_IN: tl.constexpr = False,
    PREFETCH: tl.constexpr = False, SILU_MUL: tl.constexpr = False, CUDA: tl.constexpr = True,
    PRE_WAIT: tl.constexpr = False, PANEL: tl.constexpr = 0, EARLY_RELEASE: tl.constexpr = False,
    PROBE: tl.constexpr = 0, STEPS: tl.constexpr = 0,
):  # fmt: skip
    """gemv3 (steps of ``BLOCK_R`` word rows, scales in the accumulator's layout) with packed-fp16 FMAs: a
    pair of weights costs a ``lop3``, ``sub.f16x2`` and ``fma.f16x2`` (DENORM: ``and``, ``fma``), not ~7.

    Nibbles ``j`` and ``j + 4`` of a word lie 16 bits apart: one mask makes both halves of an f16x2 (codes
    times 16 still fit the 10-bit mantissa, so words >> 8 for j = 2, 3). Precision: fp16 sums only span
    ``CHAIN`` words of one column and group (rows ``CHAIN`` apart in tiles of their own, so one thread holds
    them), 4 * CHAIN products a half, then float32 for scale and bias (row sums of x, as gemv2). Range:
    fp16 ends at 65504 and activations reach thousands (down_proj inputs), so x is scaled by a power of
    two fitted to the program's absmax (a pass over its K slice before the loop) that keeps those products
    in range (DENORM: x * 2**24 within fp16); exact, and undone at the end. ``COLS`` column tiles share a
    row's x work (~32 instructions), which Triton's layout (8 columns a thread) pays per 8 words otherwise.

    ``M_ROWS`` (1-4) rows of x (``y [M_ROWS, N]``, row strides ``stride_xm``, ``stride_ym``) share each
    word load and code pair: one ``fma.f16x2`` a row per pair, so a decode batch of 2-4 reads the weights
    once at about a GEMV's cost per weight. Each row has its own power-of-two scale: one shared scale
    fitted to a row with an activation of thousands would push another row's small products into fp16
    subnormals; the extra cost is one absmax pass a row before the loop and none inside it.

    ``PDL`` (`engine.pdl`): wait for the previous kernel before the first load; release the next one
    after the main loop, so that it launches during this one's split-K tail.

    ``AMAX_IN`` (on for the layers after an RMSNorm, `engine.fused_ops.row_amax`: -10.5 us a batch-1 step
    on the H200): each row's absmax over all of K comes in
    ``amax_ptr`` (float32 ``[M_ROWS]``) instead of the per-program pass over the program's K slice, which
    ends in a reduction and a barrier before the first weight load issues. A power-of-two scale fitted to
    the whole row is as exact; only values below ``2**-24`` of the row's absmax flush to zero earlier.

    ``PREFETCH``: the next step's words load before this step's math (held in registers), so a program
    keeps a step of loads in flight while it computes instead of waiting a round trip a step; costs a
    second step of word registers, hence fewer resident programs. 2: the step's scales and biases too
    (else their HBM round trip, issued at the top of each step, is still waited for in every step), and
    the first step's words, scales and biases are issued before the absmax pass, whose loads, reduction
    and barriers they used to follow (ncu: the one-token GEMVs launch < 1 wave and stall on loads).

    ``PRE_WAIT`` (with ``PREFETCH`` 2 and ``PDL``): the first step's words, scales and biases load before
    PDL's wait, so their HBM round trip overlaps the kernel ahead (a norm, attention, or a GEMV's split-K
    tail) instead of following it. Safe: no kernel writes weights. Unlike pulling a program's whole slice
    into L2 (`engine.pdl`, slower), this is one step's registers a program.

    ``SILU_MUL`` (``[gate | up]`` weights, two column tiles, no split-K): tile 0 takes gate's columns and
    tile 1 the same columns of up's (``N // 2`` on), and the program writes ``silu(gate) * up`` (``y [M_ROWS,
    N // 2]``) with each sum rounded as it would be stored and then `engine.fused_ops.silu_mul`'s
    rounding (``CUDA``: torch's CUDA silu, as that kernel computes it compiled): the same bits as the two
    kernels, with one launch and one PDL hand-over fewer a layer.

    ``PREFETCH`` 3: all of a program's ``STEPS`` steps (every program has exactly that many) load before
    the first step's math, as level 2's first step does: a program's whole slice in flight, for small
    steps (meant to shrink the math left after the last bytes land) or for split 1 with K over many warps
    (no split-K sum). On an H100 it was no faster than level 2 at split-K configs (bench/RESULTS.md,
    2026-12-07); the split-1 configs of the H100 table (qkv, o) use it.

    ``EARLY_RELEASE`` (with ``PDL``): release the next kernel as the program starts, as the small kernels
    do, not after the main loop. Safe either way (the next kernel still waits for this one to finish);
    what changes is only when its launch and its programs' first loads may start.

    ``PROBE``, for measurement only (`bench/gemv_ablation.py`; the launcher passes `gpu.H2_PROBE`, 0, and
    a probe's results are wrong): bit 1 leaves split-K's partial tiles unsummed (no ticket, no sum), bit 2
    replaces the step's math by an integer sum of its words (the loads stay), with ``PREFETCH`` 2."""
    RP: tl.constexpr = BLOCK_R // CHAIN
    BC: tl.constexpr = BLOCK_N // COLS
    LCU: tl.constexpr = 24 if DENORM else 0  # the codes are q * 2**-LCU
    TX: tl.constexpr = 15 if DENORM else 10 - CHAIN // 2  # x's scaled absmax lies in [2**(TX-1), 2**TX)
    if SILU_MUL:  # column tile 0 of gate's half, tile 1 the same columns of up's (N // 2 on)
        tl.static_assert(COLS == 2 and SPLIT == 0, "SILU_MUL: two column tiles, no split-K")
        cols0 = tl.program_id(0) * BC + tl.arange(0, BC)
        colv = (cols0, cols0 + N // 2)
    else:
        cols0 = tl.program_id(0) * BLOCK_N + tl.arange(0, BC)
        colv = ()
        for c in tl.static_range(COLS):
            colv = colv + (cols0 + c * BC,)
    wb, sbb = (), ()  # per column tile: its columns' word and scale offsets in the first row, rows RS apart
    for c in tl.static_range(COLS):
        RS, wc, sc = panel_offsets(colv[c], N, K, GROUP, PANEL, BC)
        wb, sbb = wb + (wc,), sbb + (sc,)
    rr = tl.arange(0, RP) * CHAIN
    r0 = tl.program_id(1) * rows_per_split
    r1 = tl.minimum(r0 + rows_per_split, K // 8)
    EARLY: tl.constexpr = PREFETCH >= 2 and PRE_WAIT  # weights: written by no kernel, so before the wait
    tl.static_assert(PROBE % 4 < 2 or PREFETCH == 2, "PROBE bit 2: the PREFETCH 2 loop")
    if EARLY_RELEASE:
        pdl.release(PDL)
    if not EARLY:
        pdl.wait(PDL)
    if PREFETCH == 2:  # the first step's loads before the absmax pass: their round trips overlap
        words = _h2_words(w_ptr, r0, rr, colv, wb, N, RS, CHAIN, COLS, EVEN, r0 < r1)
        sbs = _h2_sb(s_ptr, b_ptr, r0, rr, colv, sbb, N, RS, GROUP, COLS, EVEN, r0 < r1)
    if PREFETCH == 3:  # every step's loads, one flat tuple (a step's words, then its scales and biases)
        ahead = ()
        for st in tl.static_range(STEPS):
            ahead = ahead + _h2_words(w_ptr, r0 + st * BLOCK_R, rr, colv, wb, N, RS, CHAIN, COLS, EVEN)
            ahead = ahead + _h2_sb(s_ptr, b_ptr, r0 + st * BLOCK_R, rr, colv, sbb, N, RS, GROUP, COLS, EVEN)
    if EARLY:
        pdl.wait(PDL)
    xr, v, inv = (), (), ()  # per row of x: its pointer, scale and the scale's inverse (times 2**LCU)
    for m in tl.static_range(M_ROWS):
        xm = x_ptr if m == 0 else x_ptr + m * stride_xm
        if AMAX_IN:  # the row's absmax, one load whose wait the first weight loads need not follow
            vm, im = _h2_scale_of(tl.load(amax_ptr + m), TX, LCU)
        else:
            vm, im = _h2_scale(xm, r0 * 8, r1 * 8, TX, LCU)
        xr, v, inv = xr + (xm,), v + (vm,), inv + (im,)
    acc = (tl.zeros((RP, BC), dtype=tl.float32),) * (COLS * M_ROWS)  # index c * M_ROWS + m, as h
    if PREFETCH == 3:
        PER: tl.constexpr = CHAIN * COLS + 2 * COLS  # loads a step
        for st in tl.static_range(STEPS):
            words, sbs = (), ()
            for i in tl.static_range(CHAIN * COLS):
                words = words + (ahead[st * PER + i],)
            for i in tl.static_range(2 * COLS):
                sbs = sbs + (ahead[st * PER + CHAIN * COLS + i],)
            acc = _h2_step(words, sbs, acc, r0 + st * BLOCK_R, rr, xr, v, CHAIN, COLS, M_ROWS, LCU, ASM,
                           DENORM)  # fmt: skip
    elif PREFETCH == 2:  # words, scales and biases a step ahead: no round trip inside the loop
        for r in range(r0, r1, BLOCK_R):
            ok = r + BLOCK_R < r1
            ahead = _h2_words(w_ptr, r + BLOCK_R, rr, colv, wb, N, RS, CHAIN, COLS, EVEN, ok)
            sbs_ahead = _h2_sb(s_ptr, b_ptr, r + BLOCK_R, rr, colv, sbb, N, RS, GROUP, COLS, EVEN, ok)
            if PROBE % 4 >= 2:
                acc = _probe_sum(words, acc, CHAIN, COLS, M_ROWS)
            else:
                acc = _h2_step(words, sbs, acc, r, rr, xr, v, CHAIN, COLS, M_ROWS, LCU, ASM,
                               DENORM)  # fmt: skip
            words, sbs = ahead, sbs_ahead
    elif PREFETCH:
        words = _h2_words(w_ptr, r0, rr, colv, wb, N, RS, CHAIN, COLS, EVEN, r0 < r1)
        for r in range(r0, r1, BLOCK_R):
            ahead = _h2_words(w_ptr, r + BLOCK_R, rr, colv, wb, N, RS, CHAIN, COLS, EVEN, r + BLOCK_R < r1)
            sbs = _h2_sb(s_ptr, b_ptr, r, rr, colv, sbb, N, RS, GROUP, COLS, EVEN)
            acc = _h2_step(words, sbs, acc, r, rr, xr, v, CHAIN, COLS, M_ROWS, LCU, ASM,
                           DENORM)  # fmt: skip
            words = ahead
    else:
        for r in range(r0, r1, BLOCK_R):
            words = _h2_words(w_ptr, r, rr, colv, wb, N, RS, CHAIN, COLS, EVEN)
            sbs = _h2_sb(s_ptr, b_ptr, r, rr, colv, sbb, N, RS, GROUP, COLS, EVEN)
            acc = _h2_step(words, sbs, acc, r, rr, xr, v, CHAIN, COLS, M_ROWS, LCU, ASM,
                           DENORM)  # fmt: skip
    if not EARLY_RELEASE:
        pdl.release(PDL)
    if SILU_MUL:  # y [M_ROWS, N // 2]: each row's gate and up rounded as stored, then as `silu_mul`
        dt: tl.constexpr = y_ptr.dtype.element_ty
        for m in tl.static_range(M_ROWS):
            g = (tl.sum(acc[m], axis=0) * inv[m]).to(dt)
            u = (tl.sum(acc[M_ROWS + m], axis=0) * inv[m]).to(dt)
            ym = y_ptr if m == 0 else y_ptr + m * stride_ym
            tl.store(ym + cols0, silu_mul_math(g, u, dt, CUDA), mask=(cols0 < N // 2) | EVEN)
    else:
        for c in tl.static_range(COLS):
            for m in tl.static_range(M_ROWS):
                out = tl.sum(acc[c * M_ROWS + m], axis=0) * inv[m]
                ym = y_ptr if m == 0 else y_ptr + m * stride_ym
                part = ws_ptr + (tl.program_id(1) * M_ROWS + m) * stride_ym
                _write_row(ym, part, out, colv[c], colv[c] < N, SPLIT)
    if SPLIT and PROBE % 2 == 0:
        _finish_split(y_ptr, ws_ptr, lock_ptr, M_ROWS, N, stride_ym, M_ROWS + (M_ROWS == 3), BLOCK_N, SPLIT)


@triton.jit
def _probe_sum(words, acc, CHAIN: tl.constexpr, COLS: tl.constexpr, M_ROWS: tl.constexpr):
    """``PROBE`` bit 2: the step's words added as integers into the accumulators, so that the loads stay
    live while the math is gone."""
    an = ()
    for c in tl.static_range(COLS):
        s = words[c]
        for p in tl.static_range(1, CHAIN):
            s = s + words[p * COLS + c]
        for m in tl.static_range(M_ROWS):
            an = an + (acc[c * M_ROWS + m] + s.to(tl.float32),)
    return an


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


@triton.jit
def _h2_step(words, sbs, acc, r, rr, xr, v, CHAIN: tl.constexpr, COLS: tl.constexpr, M_ROWS: tl.constexpr,
             LCU: tl.constexpr, ASM: tl.constexpr, DENORM: tl.constexpr):  # fmt: skip
    """One step of `w4k_gemv_h2_kernel`'s K loop: the fp16 pair sums of ``words`` for every row of x,
    then scale and bias (``sbs``, `_h2_sb`) into the float32 accumulators ``acc``."""
    RP: tl.constexpr = rr.shape[0]
    BC: tl.constexpr = words[0].shape[1]
    h = (tl.zeros((RP, BC), dtype=tl.int32) if ASM else tl.zeros((RP, BC, 2), tl.float32),)
    h = h * (COLS * M_ROWS)
    xs = (tl.zeros((RP,), dtype=tl.float32),) * M_ROWS
    for p in tl.static_range(CHAIN):
        x8 = ()
        for m in tl.static_range(M_ROWS):
            x8 = x8 + _x8(xr[m], r + rr + p)  # row m's x at x8[8 * m + i]
        for j in tl.static_range(4):
            xp, xn = (), ()
            for m in tl.static_range(M_ROWS):
                xn = xn + (xs[m] + (x8[8 * m + j] + x8[8 * m + j + 4]),)
                f = v[m] / (1 << (4 * (j % 2)))
                xp = xp + (_h2_xpair(x8[8 * m + j] * f, x8[8 * m + j + 4] * f, ASM),)  # once a row
            xs = xn
            hn = ()
            for c in tl.static_range(COLS):
                src = words[p * COLS + c] if j < 2 else words[p * COLS + c] >> 8
                if M_ROWS == 1:  # one asm: the code as before the rows
                    hn = hn + (_h2_fma(src, xp[0], h[c], j % 2, DENORM, ASM),)
                else:
                    codes = _h2_codes(src, j % 2, DENORM, ASM)
                    for m in tl.static_range(M_ROWS):
                        hn = hn + (_h2_fma_row(codes, xp[m], h[c * M_ROWS + m], ASM),)
            h = hn
    xb = ()
    for m in tl.static_range(M_ROWS):
        xb = xb + ((xs[m] * (v[m] / (1 << LCU)))[:, None],)
    an = ()
    for c in tl.static_range(COLS):
        s2, b2 = sbs[2 * c].to(tl.float32), sbs[2 * c + 1].to(tl.float32)
        for m in tl.static_range(M_ROWS):
            an = an + (acc[c * M_ROWS + m] + _h2_sum(h[c * M_ROWS + m], ASM) * s2 + xb[m] * b2,)
    return an
