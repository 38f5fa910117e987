"""int4 kernels on the K-packed layout: the decode GEMV/GEMM that reads each weight byte once at HBM speed.

Layout (made by `engine.quant.gpu.pack`): ``w [K // 8, N]`` int32, nibble ``i`` of word ``(r, n)`` is
``q[n, 8r + i]``; scales and biases fp16 ``[K // GROUP, N]``: ``w = q * s + b`` per group of K.

Why K-packed and why the bit tricks (the N-packed kernels in `triton_kernels` reached 19-40 % of the
copy bandwidth, measured in bench/RESULTS.md, being bound by ALU, not memory):
- The 8 codes of one word belong to one output column, so nibble ``i`` of every word of a tile is a plain
  elementwise op on the loaded tile: no reshape or layout shuffle, and the matching activations are
  ``x[8r + i]`` (a strided load of a few hundred bytes, served by L1).
- int -> float conversion (I2F) issues at 1/8 of the FMA rate on Hopper. A code is made a float by OR-ing
  it into the mantissa of 2**23 (``0x4B000000``) and subtracting 2**23: one logic op and one add, both full
  rate. Nibbles 0-4 are masked in place (``q << 4j`` still fits the 23-bit mantissa) and the exact power
  of two ``16**-j`` is moved onto the activation, so only nibbles 5-7 need a shift.
- The group identity ``sum_k x_k (q_k s + b) = s * (x . q) + b * sum(x)`` leaves one multiply-add per code.
"""

from __future__ import annotations

import triton
import triton.language as tl

from engine import pdl
from engine.quant.triton_kernels import _write_tile, _write_vec

MAGIC_BITS = tl.constexpr(0x4B000000)  # 2**23 as float32 bits: OR a value < 2**23 into the mantissa
MAGIC = tl.constexpr(8388608.0)  # ... then subtract 2**23


@triton.jit
def _magic(src, MASK: tl.constexpr, ASM: tl.constexpr):
    """``float(src & MASK)`` for ``MASK`` within the mantissa. ``ASM``: the mask and the OR in one ``lop3``
    (ptxas emits two logic ops for ``(a & m) | c`` with two constants: measured from the SASS)."""
    if ASM:
        bits = tl.inline_asm_elementwise(
            "lop3.b32 $0, $1, $2, 0x4B000000, 0xEA;", "=r,r,r", [src, tl.full(src.shape, MASK, tl.int32)],
            dtype=tl.int32, is_pure=True, pack=1,
        )  # fmt: skip
    else:
        bits = (src & MASK) | MAGIC_BITS
    return bits.to(tl.float32, bitcast=True) - MAGIC


@triton.jit
def _code(words, hi, i: tl.constexpr, ASM: tl.constexpr = False):
    """Nibble ``i`` of each word as float32 ``q * 16**j`` (j = i for i < 5, else i - 5, read from ``hi``)."""
    if i < 5:  # noqa: SIM108 - a constexpr branch: Triton compiles only the taken one
        out = _magic(words, 0xF << (4 * i), ASM)
    else:
        out = _magic(hi, 0xF << (4 * (i - 5)), ASM)
    return out


@triton.jit
def _unit(i: tl.constexpr):
    """``16**-j`` for nibble ``i``: the power of two `_code` leaves on the code, moved onto x (exact)."""
    if i < 5:
        return 1.0 / (1 << (4 * i))
    else:
        return 1.0 / (1 << (4 * (i - 5)))


@triton.jit
def panel_cols(rn, rows, PANEL: tl.constexpr, BLOCK: tl.constexpr):
    """Offsets of columns ``rn`` (``BLOCK`` consecutive from a multiple of ``BLOCK``) in the first row of a
    ``[rows, N]`` tensor of words or scales, or of its panel layout ``[N // PANEL, rows, PANEL]``
    (`engine.quant.gpu.to_panels`), where a row is then ``PANEL`` apart, not ``N``: runs of
    ``min(PANEL, BLOCK)`` columns stay contiguous, said to Triton so that loads stay 16-byte vectors."""
    if PANEL:
        RUN: tl.constexpr = PANEL if PANEL < BLOCK else BLOCK
        out = tl.max_contiguous(tl.multiple_of((rn // PANEL) * (rows * PANEL) + rn % PANEL, RUN), RUN)
    else:
        out = rn
    return out


@triton.jit
def panel_offsets(rn, N, K, GROUP: tl.constexpr, PANEL: tl.constexpr, BLOCK: tl.constexpr):
    """``(stride, words, scales)``: a row's stride in the words and in the scales and biases (``N``, or
    ``PANEL`` in panels), and where columns ``rn`` start in their first row (`panel_cols`)."""
    RS = PANEL if PANEL else N
    return RS, panel_cols(rn, K // 8, PANEL, BLOCK), panel_cols(rn, K // GROUP, PANEL, BLOCK)


@triton.jit
def w4k_gemv_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, N, K, rows_per_split,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    ASM: tl.constexpr = False, ROW_SUMS: tl.constexpr = False, BLOCK_R: tl.constexpr = 0,
    PDL: tl.constexpr = False, PANEL: tl.constexpr = 0,
):  # fmt: skip
    """One token on CUDA cores: ``y[N] = x[K] @ dequant(w)``, a ``[rows, BLOCK_N]`` accumulator reduced
    over K once after the loop (no cross-warp reduction per step for the codes). A step takes one group
    (``GROUP // 8`` word rows), or ``BLOCK_R`` rows (with ``ROW_SUMS``).

    ``ROW_SUMS`` (gemv2, with ``ASM``: one logic op a code): the bias goes through per-row sums of x into
    the same 2-D accumulator, so a group step has no cross-thread reduction at all; otherwise the group's
    sum of x is reduced each step and the bias kept apart.

    ``BLOCK_R`` (gemv3): each row's scale and bias are loaded in the accumulator's own layout (no shuffle
    through shared memory), so a step may span several groups. Why: Triton does not software-pipeline a
    loop without a ``tl.dot``: its SASS loads a step's words at the top and waits (and ptxas sinks loads
    written a step ahead back to their use), so a step pays an HBM round trip; a step of 2-4 groups loads
    2-4x the bytes per round trip."""
    R: tl.constexpr = BLOCK_R if BLOCK_R else GROUP // 8
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, R)
    nmask = rn < N
    r0 = pid_k * rows_per_split
    r1 = tl.minimum(r0 + rows_per_split, K // 8)
    acc = tl.zeros((R, BLOCK_N), dtype=tl.float32)
    bacc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    RS, wc, sc = panel_offsets(rn, N, K, GROUP, PANEL, BLOCK_N)
    pdl.wait(PDL)  # PDL: `engine.pdl`
    for r in range(r0, r1, R):
        words = tl.load(w_ptr + (r + rr)[:, None] * RS + wc[None, :], mask=nmask[None, :], other=0)
        hi = words >> 20
        xg = x_ptr + (r + rr) * 8
        part = tl.zeros((R, BLOCK_N), dtype=tl.float32)
        xr = tl.zeros((R,), dtype=tl.float32)
        for i in tl.static_range(8):
            xi = tl.load(xg + i).to(tl.float32)
            if ROW_SUMS:
                xr += xi
            part += (xi * _unit(i))[:, None] * _code(words, hi, i, ASM)
        if BLOCK_R:  # per-row group index: [R, BLOCK_N] scales and biases, no layout conversion
            sb = ((r + rr) * 8 // GROUP)[:, None] * RS + sc[None, :]
            s2 = tl.load(s_ptr + sb, mask=nmask[None, :], other=0.0).to(tl.float32)
            b2 = tl.load(b_ptr + sb, mask=nmask[None, :], other=0.0).to(tl.float32)
            acc += part * s2 + xr[:, None] * b2
        else:
            g = r // R
            s = tl.load(s_ptr + g * RS + sc, mask=nmask, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + g * RS + sc, mask=nmask, other=0.0).to(tl.float32)
            if ROW_SUMS:
                acc += part * s[None, :] + xr[:, None] * b[None, :]
            else:
                xs = tl.sum(tl.load(x_ptr + g * GROUP + tl.arange(0, GROUP)).to(tl.float32), axis=0)
                acc += part * s[None, :]
                bacc += xs * b
    pdl.release(PDL)
    _write_vec(y_ptr, ws_ptr, lock_ptr, tl.sum(acc, axis=0) + bacc, rn, nmask, N, SPLIT, BLOCK_N)


@triton.jit
def _step_terms(xrow, s_ptr, b_ptr, r, g, sc, mmask, nmask, RS, BLOCK_R: tl.constexpr):
    """For a dot step of ``BLOCK_R`` word rows inside group ``g``: each row's sum of x over the step's K
    (for the bias), and the group's scales and biases as float32 (columns at ``sc``, rows ``RS`` apart:
    `panel_cols`)."""
    xk = r * 8 + tl.arange(0, BLOCK_R * 8)
    xs = tl.sum(tl.load(xrow + xk[None, :], mask=mmask[:, None], other=0.0).to(tl.float32), axis=1)
    s = tl.load(s_ptr + g * RS + sc, mask=nmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + g * RS + sc, mask=nmask, other=0.0).to(tl.float32)
    return xs, s, b


@triton.jit
def _mm_tile(x_ptr, M, N, K, stride_xm, rows_per_split, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_R: tl.constexpr):  # fmt: skip
    """A tensor-core program's indices: its rows and columns with their masks, the step's word rows, its
    split-K range of word rows ``[r0, r1)`` and the pointers to its activation rows."""
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r0 = tl.program_id(1) * rows_per_split
    r1 = tl.minimum(r0 + rows_per_split, K // 8)
    return rm, rn, tl.arange(0, BLOCK_R), rm < M, rn < N, r0, r1, x_ptr + rm[:, None] * stride_xm


@triton.jit
def w4k_mm_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_ym, rows_per_split,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    SPLIT: tl.constexpr, ASM: tl.constexpr = False, PDL: tl.constexpr = False, PANEL: tl.constexpr = 0,
):  # fmt: skip
    """``y[M, N] = x[M, K] @ dequant(w)`` on tensor cores, one ``tl.dot`` per nibble position.

    Each dot pairs nibble ``i`` of ``BLOCK_R`` word rows with the activations ``x[:, 8r + i]``: the sum
    over K is the same in any order, so the codes never need interleaving. When a step stays inside one
    group (``BLOCK_R * 8 <= GROUP``) the dots take the integer codes (exact in bf16, the ``16**j`` moved
    onto x) and scale/bias apply once per step; otherwise each weight is dequantized before its dot."""
    IDENTITY: tl.constexpr = (BLOCK_R * 8) <= GROUP
    rm, rn, rr, mmask, nmask, r0, r1, xrow = _mm_tile(
        x_ptr, M, N, K, stride_xm, rows_per_split, BLOCK_M, BLOCK_N, BLOCK_R
    )
    RS, wc, sc = panel_offsets(rn, N, K, GROUP, PANEL, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    pdl.wait(PDL)  # PDL: `engine.pdl`
    for r in range(r0, r1, BLOCK_R):
        rows = r + rr
        words = tl.load(w_ptr + rows[:, None] * RS + wc[None, :], mask=nmask[None, :], other=0)
        hi = words >> 20
        if IDENTITY:
            g = (r * 8) // GROUP
            step = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for i in tl.static_range(8):
                xi = tl.load(xrow + (rows * 8 + i)[None, :], mask=mmask[:, None], other=0.0)
                xi = (xi.to(tl.float32) * _unit(i)).to(x_ptr.dtype.element_ty)
                step = tl.dot(xi, _code(words, hi, i, ASM).to(x_ptr.dtype.element_ty), step)
            xs, s, b = _step_terms(xrow, s_ptr, b_ptr, r, g, sc, mmask, nmask, RS, BLOCK_R)
            acc += step * s[None, :] + xs[:, None] * b[None, :]
        else:
            sb = ((rows * 8) // GROUP)[:, None] * RS + sc[None, :]
            s = tl.load(s_ptr + sb, mask=nmask[None, :], other=0.0).to(tl.float32)
            b = tl.load(b_ptr + sb, mask=nmask[None, :], other=0.0).to(tl.float32)
            for i in tl.static_range(8):
                xi = tl.load(xrow + (rows * 8 + i)[None, :], mask=mmask[:, None], other=0.0)
                w = _code(words, hi, i, ASM) * (s * _unit(i)) + b
                acc = tl.dot(xi, w.to(x_ptr.dtype.element_ty), acc)
    pdl.release(PDL)
    _write_tile(y_ptr, ws_ptr, lock_ptr, acc, rm, rn, mmask, nmask, M, N, stride_ym, SPLIT, BLOCK_M, BLOCK_N)


_PAIR = "{ .reg .b32 t; %s lop3.b32 t, %s, 0x000F000F, 0x43004300, 0xEA; mov.b32 {$0, $1}, t; }"
PAIR_ASM = tl.constexpr(
    tuple([_PAIR % ("", "$2")] + [_PAIR % (f"shr.u32 t, $2, {4 * j};", "t") for j in (1, 2, 3)])
)  # nibbles (j, j + 4) of a word -> bf16x2 (128 + q_j, 128 + q_j+4)


@triton.jit
def _pair(words, j: tl.constexpr, ASM: tl.constexpr):
    """Nibbles ``j`` and ``j + 4`` of each word as bf16 ``128 + q``, two codes from one shift and one
    ``lop3``: nibbles 16 bits apart land in the two halves of ``0x43004300`` (bf16 128.0, 7 mantissa bits),
    so the pair is a packed bf16x2 with no float arithmetic and no conversion instruction."""
    if ASM:
        if j == 0:
            asm: tl.constexpr = PAIR_ASM[0]
        elif j == 1:
            asm: tl.constexpr = PAIR_ASM[1]
        elif j == 2:
            asm: tl.constexpr = PAIR_ASM[2]
        else:
            asm: tl.constexpr = PAIR_ASM[3]
        lo, hi = tl.inline_asm_elementwise(
            asm, "=h,=h,r", [words], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=1
        )
    else:  # the same values, plainly (Triton's interpreter cannot run PTX)
        lo = (((words >> (4 * j)) & 0xF) + 128).to(tl.float32).to(tl.bfloat16)
        hi = (((words >> (4 * j + 16)) & 0xF) + 128).to(tl.float32).to(tl.bfloat16)
    return lo, hi


@triton.jit
def w4k_mm2_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_ym, rows_per_split,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    SPLIT: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr = False, PANEL: tl.constexpr = 0,
):  # fmt: skip
    """`w4k_mm_kernel` (group identity form, ``BLOCK_R * 8`` dividing ``GROUP``) with the codes made by
    `_pair`: ``x . (128 + q) - 128 * sum(x)`` is ``x . q``, so the 128 goes into the bias term. About one
    instruction a code for the conversion instead of 2.5 (bench/sass_count.py)."""
    rm, rn, rr, mmask, nmask, r0, r1, xrow = _mm_tile(
        x_ptr, M, N, K, stride_xm, rows_per_split, BLOCK_M, BLOCK_N, BLOCK_R
    )
    RS, wc, sc = panel_offsets(rn, N, K, GROUP, PANEL, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    pdl.wait(PDL)  # PDL: `engine.pdl`
    for r in range(r0, r1, BLOCK_R):
        rows = r + rr
        words = tl.load(w_ptr + rows[:, None] * RS + wc[None, :], mask=nmask[None, :], other=0)
        step = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for j in tl.static_range(4):
            lo, hi = _pair(words, j, ASM)
            x_lo = tl.load(xrow + (rows * 8 + j)[None, :], mask=mmask[:, None], other=0.0)
            x_hi = tl.load(xrow + (rows * 8 + j + 4)[None, :], mask=mmask[:, None], other=0.0)
            if x_ptr.dtype.element_ty == tl.float32:  # tests: TF32 would round x against the 128 offset
                step = tl.dot(x_lo, lo.to(tl.float32), step, input_precision="ieee")
                step = tl.dot(x_hi, hi.to(tl.float32), step, input_precision="ieee")
            else:  # bf16/fp16 products of 128 + q are exact
                step = tl.dot(x_lo, lo.to(x_ptr.dtype.element_ty), step)
                step = tl.dot(x_hi, hi.to(x_ptr.dtype.element_ty), step)
        xs, s, b = _step_terms(xrow, s_ptr, b_ptr, r, (r * 8) // GROUP, sc, mmask, nmask, RS, BLOCK_R)
        acc += step * s[None, :] + xs[:, None] * (b - 128.0 * s)[None, :]
    pdl.release(PDL)
    _write_tile(y_ptr, ws_ptr, lock_ptr, acc, rm, rn, mmask, nmask, M, N, stride_ym, SPLIT, BLOCK_M, BLOCK_N)


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    """``a @ b + acc``; ``IEEE`` for float32 operands (tests), where TF32 would round x against the 128
    offset of the codes (bf16/fp16 products of 128 + q are exact)."""
    if IEEE:  # noqa: SIM108 - a constexpr branch: Triton compiles only the taken one
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def w4k_mmt_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_ym, rows_per_split,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    SPLIT: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr = False, JOIN: tl.constexpr = 1,
    PANEL: tl.constexpr = 0,
):  # fmt: skip
    """`w4k_mm2_kernel` with the operands swapped (modes 20-22): ``y.T = dequant(w).T @ x.T``, so the
    codes are the dot's first operand ``[BLOCK_N, JOIN * BLOCK_R]`` and the 16 activation rows its second.

    Why: on Hopper a ``wgmma`` takes its first operand from registers but its second from shared memory,
    so in mm/mm2 every dequantized code pair (the second operand) goes through shared memory before its
    dot, while here the codes stay in registers and only the few activations are staged. The dot's
    M is ``BLOCK_N`` (64 a warp group), its N the batch's 16 rows, which the instruction allows.

    ``JOIN``, the codes of a word that one dot takes along K (the activations gathered to match):
    1 (mode 20), a dot a nibble; 2 (mode 21), a dot a nibble pair, K index ``2r + h`` holding nibble
    ``j + 4h``, so the bf16x2 `_pair` makes is two K-neighbours, as an mma fragment holds its first
    operand; 8 (mode 22), a dot a step, K index ``8r + 4a + 2b + h`` holding nibble ``2a + b + 4h``, so
    the activations are staged once a step, with the barriers that staging costs."""
    rm, rn, rr, mmask, nmask, r0, r1, xrow = _mm_tile(
        x_ptr, M, N, K, stride_xm, rows_per_split, BLOCK_M, BLOCK_N, BLOCK_R
    )
    RS, wc, sc = panel_offsets(rn, N, K, GROUP, PANEL, BLOCK_N)
    kk = tl.arange(0, JOIN * BLOCK_R)
    if JOIN == 8:  # noqa: SIM108 - a constexpr branch: Triton compiles only the taken one
        xoff = (kk // 8) * 8 + ((kk // 4) % 2) * 2 + ((kk // 2) % 2) + (kk % 2) * 4
    else:  # JOIN 2 (JOIN 1 reads x by word row, from xt)
        xoff = (kk // 2) * 8 + (kk % 2) * 4
    xt = x_ptr + rm[None, :] * stride_xm
    xcol = x_ptr + rm[None, :] * stride_xm + xoff[:, None]  # then + 8 r + the nibble
    IEEE: tl.constexpr = x_ptr.dtype.element_ty == tl.float32
    dt: tl.constexpr = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    pdl.wait(PDL)  # PDL: `engine.pdl`
    for r in range(r0, r1, BLOCK_R):
        words = tl.load(w_ptr + (r + rr)[None, :] * RS + wc[:, None], mask=nmask[:, None], other=0)
        step = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        if JOIN == 8:
            lo0, hi0 = _pair(words, 0, ASM)
            lo1, hi1 = _pair(words, 1, ASM)
            lo2, hi2 = _pair(words, 2, ASM)
            lo3, hi3 = _pair(words, 3, ASM)
            lo = tl.join(tl.join(lo0.to(dt), lo2.to(dt)), tl.join(lo1.to(dt), lo3.to(dt)))  # [.., a, b]
            hi = tl.join(tl.join(hi0.to(dt), hi2.to(dt)), tl.join(hi1.to(dt), hi3.to(dt)))
            codes = tl.reshape(tl.join(lo, hi), (BLOCK_N, 8 * BLOCK_R))
            step = _dot(codes, tl.load(xcol + r * 8, mask=mmask[None, :], other=0.0), step, IEEE)
        else:
            for j in tl.static_range(4):
                lo, hi = _pair(words, j, ASM)
                if JOIN == 2:
                    xj = tl.load(xcol + (r * 8 + j), mask=mmask[None, :], other=0.0)  # [2 * BLOCK_R, BLOCK_M]
                    codes = tl.reshape(tl.join(lo.to(dt), hi.to(dt)), (BLOCK_N, 2 * BLOCK_R))
                    step = _dot(codes, xj, step, IEEE)
                else:
                    x_lo = tl.load(xt + ((r + rr) * 8 + j)[:, None], mask=mmask[None, :], other=0.0)
                    x_hi = tl.load(xt + ((r + rr) * 8 + j + 4)[:, None], mask=mmask[None, :], other=0.0)
                    step = _dot(lo.to(dt), x_lo, step, IEEE)
                    step = _dot(hi.to(dt), x_hi, step, IEEE)
        xs, s, b = _step_terms(xrow, s_ptr, b_ptr, r, (r * 8) // GROUP, sc, mmask, nmask, RS, BLOCK_R)
        acc += step * s[:, None] + (b - 128.0 * s)[:, None] * xs[None, :]
    pdl.release(PDL)
    out = tl.trans(acc)
    _write_tile(y_ptr, ws_ptr, lock_ptr, out, rm, rn, mmask, nmask, M, N, stride_ym, SPLIT, BLOCK_M, BLOCK_N)


@triton.jit
def dequant_w4k_kernel(
    w_ptr, s_ptr, b_ptr, out_ptr, N, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, ASM: tl.constexpr = False,
    PANEL: tl.constexpr = 0,
):  # fmt: skip
    """K-packed int4 (rows or panels: `panel_cols`) -> ``out [K, N]`` in the model dtype (prefill's
    tensor-core GEMM), a group a program."""
    RW: tl.constexpr = GROUP // 8
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = g * RW + tl.arange(0, RW)
    nmask = rn < N
    RS, wc, sc = panel_offsets(rn, N, tl.num_programs(1) * GROUP, GROUP, PANEL, BLOCK_N)  # a group a program
    words = tl.load(w_ptr + rows[:, None] * RS + wc[None, :], mask=nmask[None, :], other=0)
    hi = words >> 20
    s = tl.load(s_ptr + g * RS + sc, mask=nmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + g * RS + sc, mask=nmask, other=0.0).to(tl.float32)
    for i in tl.static_range(8):
        w = _code(words, hi, i, ASM) * (s * _unit(i))[None, :] + b[None, :]
        dst = out_ptr + (rows * 8 + i)[:, None] * N + rn[None, :]
        tl.store(dst, w.to(out_ptr.dtype.element_ty), mask=nmask[None, :])
