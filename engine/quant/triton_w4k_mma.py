"""The one-token int4 GEMV on tensor cores (sweep mode 6), on the K-packed layout of `engine.quant.triton_w4k`
(``w [K // 8, N]`` int32, 8 codes of one column a word): ``mma.sync.m16n8k16`` with the weights as A.

Why: the packed-fp16 GEMV (`triton_w4k_h2`) spends ~2.6 SASS instructions a weight in its loop
(`bench/sass_count.py`): half an ``fma.f16x2`` a weight, then its fp16 sums widened, scaled and biased every
few words, and x's pairs made again for every 8 words a thread holds. An ``mma`` takes 256 weights of a warp
in one instruction and sums in float32, so a weight costs its share of the masks that make codes (5 logic
ops a word of 8) and little else.

How a word becomes an A fragment with no shuffle. The mma's K labels need not follow K's order, only be the
same for A and B. Lane ``(g, t)`` (``lane = 4g + t``) loads one 16-byte vector: the words of columns
``4g .. 4g + 3`` in row ``R + t`` of a quad of 4 word rows (32 values of K). Columns ``4g, 4g + 1`` are rows
``g, g + 8`` of one mma tile, ``4g + 2, 4g + 3`` of a second. ``word & 0x000F000F`` is the f16x2 pair of
nibbles 0 and 4 as fp16 subnormals (``q * 2**-24``), ``& 0x00F000F0`` nibbles 1 and 5 (times 16), and the
same of ``word >> 8`` nibbles 2, 6 and 3, 7. So A's registers for labels ``(2t, 2t + 1)`` and
``(2t + 8, 2t + 9)`` are masks of the lane's own words: K values ``8(R + t) + {0, 4}`` and ``{2, 6}`` in
the first mma, ``{1, 5}`` and ``{3, 7}`` in the second (whose B is x / 16). B holds the same pairs of x in
every column, so C's ``c0`` and ``c2`` of lane ``(g, t)`` are the sums of columns ``4g .. 4g + 3``: each
lane's sums are its own words' columns, with no exchange between lanes or warps in the loop or after it.

x's B registers are made once a group by the lanes of quad ``g`` (rows ``R + t``: 8 bf16 a lane, scaled
and rounded to fp16 pairs) and handed to every lane by ``shfl`` (4 a quad), not made by all 32 lanes
for every quad. The bias needs each group's sum of x: an mma of B against A of ones gives it.
``y = (2**24 * sum_g s_g C_g + sum_g b_g xs_g) / v``, with ``v`` the power of two that puts x into fp16's
range (`triton_w4k_h2._h2_scale`). Products are exact and sums float32: tighter than the fp16 GEMV.

This relies on Triton giving the 1-D word tensors their coalesced layout (4 consecutive elements a thread,
then lanes, then warps) and packing a thread's 4 elements into one asm call: checked by the GPU run of
``tests/engine/quant/test_gpu_mma.py``. Without ``ASM`` (Triton's interpreter, in CI) the same sums are
computed element by element in float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from engine import pdl
from engine.fused_ops import silu_mul_math
from engine.quant.triton_kernels import _finish_split
from engine.quant.triton_w4k_h2 import _h2_scale, _h2_scale_of

MMA = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
TWO_M24 = tl.constexpr(5.9604644775390625e-08)  # 2**-24: the codes' unit as fp16 subnormals


def group_asm(quads: int, cols: int) -> str:
    """PTX of one group for lane ``(g, t)``: B from this lane's x (operands after the outputs: 4 int32 of
    bf16 pairs, then v), shuffled per quad, the quads' mmas into one C per tile, and the sums of x.
    Operands: ``cols`` outputs of 4 (C of columns 4g .. 4g + 3), one of 4 (the group's sum of x), then x,
    v, and the words of quad q, tile c at ``q * cols + c``."""
    o = 4 * (cols + 1)
    xp, v = [f"${o + u}" for u in range(4)], f"${o + 4}"

    def word(q: int, c: int, u: int) -> str:
        return f"${o + 8 + 4 * (q * cols + c) + u}"

    regs = ["kl", "kh", "kv", "kw", "kt", "ks", "kr", "km", "kn", "kz", "ksum", "ky"]
    regs += [f"ka{u}" for u in range(4)]
    regs += [f"kb{u}" for u in range(4)] + [f"kq{u}" for u in range(4)]
    regs += [f"kc{c}{tile}{u}" for c in range(cols) for tile in "AB" for u in range(4)]
    lines = ["{", f".reg .b32 {', '.join(regs)};", f"mov.b32 kv, {v};", "mul.f32 kw, kv, 0f3D800000;"]
    for u, (lo, hi, scale) in enumerate(((0, 2, "kv"), (1, 3, "kv"), (0, 2, "kw"), (1, 3, "kw"))):
        op = "shl.b32 {d}, {s}, 16;" if u < 2 else "and.b32 {d}, {s}, 0xFFFF0000;"  # bf16 -> f32, exact
        lines += [op.format(d="kl", s=xp[lo]), op.format(d="kh", s=xp[hi])]
        lines += [f"mul.f32 kl, kl, {scale};", f"mul.f32 kh, kh, {scale};"]
        lines.append(f"cvt.rn.f16x2.f32 kb{u}, kh, kl;")
        if u >= 2:  # x / 16 back to x for the sum
            lines += ["mul.f32 kl, kl, 0f41800000;", "mul.f32 kh, kh, 0f41800000;"]
        adds = ["add.f32 ksum, ksum, kl;", "add.f32 ksum, ksum, kh;"]
        lines += ["add.f32 ksum, kl, kh;"] if u == 0 else adds
    # the group's sum of x * v: this lane's 8, then over the quads' lanes (t: xor 1, 2; g < quads: 4, 8)
    for lane_bit in [1, 2] + [4 * (1 << b) for b in range(quads.bit_length() - 1)]:
        lines += [f"shfl.sync.bfly.b32 ky, ksum, {lane_bit}, 0x1f, 0xffffffff;", "add.f32 ksum, ksum, ky;"]
    lines += ["mov.u32 kt, %laneid;", "and.b32 kt, kt, 3;", "mov.b32 kz, 0;"]
    lines += ["mov.b32 km, 0x000F000F;", "mov.b32 kn, 0x00F000F0;"]
    for q in range(quads):
        lines.append(f"add.u32 ks, kt, {4 * q};")
        lines += [f"shfl.sync.idx.b32 kq{u}, kb{u}, ks, 0x1f, 0xffffffff;" for u in range(4)]
        for c in range(cols):
            for tile, (ug, uh) in (("A", (0, 1)), ("B", (2, 3))):
                wg, wh = word(q, c, ug), word(q, c, uh)
                acc = "{" + ", ".join(f"kc{c}{tile}{u}" for u in range(4)) + "}"
                lines += [f"shr.u32 ks, {wg}, 8;", f"shr.u32 kr, {wh}, 8;"]
                zero = "{kz, kz, kz, kz}" if q == 0 else acc
                for mask, b, c_in in (("km", "kq0, kq1", zero), ("kn", "kq2, kq3", acc)):
                    lines += [f"and.b32 ka0, {wg}, {mask};", f"and.b32 ka1, {wh}, {mask};"]
                    lines += [f"and.b32 ka2, ks, {mask};", f"and.b32 ka3, kr, {mask};"]
                    lines.append(f"{MMA} {acc}, {{ka0, ka1, ka2, ka3}}, {{{b}}}, {c_in};")
    for c in range(cols):  # c0 and c2 of each tile: columns 4g, 4g + 1 (tile A), 4g + 2, 4g + 3 (tile B)
        for u, src in enumerate((f"kc{c}A0", f"kc{c}A2", f"kc{c}B0", f"kc{c}B2")):
            lines.append(f"mov.b32 ${4 * c + u}, {src};")
    lines += [f"mov.b32 ${4 * cols + u}, ksum;" for u in range(4)]
    return " ".join(lines + ["}"])


GROUP_ASM_4_1 = tl.constexpr(group_asm(4, 1))  # group 128, one column tile
GROUP_ASM_4_2 = tl.constexpr(group_asm(4, 2))
GROUP_ASM_2_1 = tl.constexpr(group_asm(2, 1))  # group 64
GROUP_ASM_2_2 = tl.constexpr(group_asm(2, 2))


def constraints(quads: int, cols: int) -> str:
    """``group_asm``'s constraint string: float outputs, then x (int32), v (float), the words (int32)."""
    return ",".join(["=f"] * (4 * (cols + 1)) + ["r"] * 4 + ["f"] * 4 + ["r"] * (4 * quads * cols))


CONS_4_1 = tl.constexpr(constraints(4, 1))
CONS_4_2 = tl.constexpr(constraints(4, 2))
CONS_2_1 = tl.constexpr(constraints(2, 1))
CONS_2_2 = tl.constexpr(constraints(2, 2))


@triton.jit
def _group_mma(xp, v, words, QUADS: tl.constexpr, COLS: tl.constexpr):
    """``(C per column tile, sums of x)`` of one group by `group_asm` (the variant for QUADS x COLS)."""
    if QUADS == 4 and COLS == 1:
        out = tl.inline_asm_elementwise(GROUP_ASM_4_1, CONS_4_1, (xp, v) + words, dtype=(tl.float32,) * 2,
                                        is_pure=True, pack=4)  # fmt: skip
    elif QUADS == 4:
        out = tl.inline_asm_elementwise(GROUP_ASM_4_2, CONS_4_2, (xp, v) + words, dtype=(tl.float32,) * 3,
                                        is_pure=True, pack=4)  # fmt: skip
    elif COLS == 1:
        out = tl.inline_asm_elementwise(GROUP_ASM_2_1, CONS_2_1, (xp, v) + words, dtype=(tl.float32,) * 2,
                                        is_pure=True, pack=4)  # fmt: skip
    else:
        out = tl.inline_asm_elementwise(GROUP_ASM_2_2, CONS_2_2, (xp, v) + words, dtype=(tl.float32,) * 3,
                                        is_pure=True, pack=4)  # fmt: skip
    return out


@triton.jit
def _lanes(NW: tl.constexpr, KW: tl.constexpr):
    """Per element of the step's 1-D tensors (4 a thread, then lanes, then warps): lane ``(g, t)``'s ``g``
    and ``t``, the element's column in its column tile (warp ``w`` takes columns ``32 (w // KW)`` on), and
    the warp's slice of K (``w % KW``: its groups are every KW-th of the program's)."""
    i = tl.arange(0, NW * 128)
    g = (i // 16) % 8
    t = (i // 4) % 4
    w = i // 128
    return g, t, (w // KW) * 32 + g * 4 + i % 4, w % KW


@triton.jit
def _warp_sum(acc, NW: tl.constexpr, KW: tl.constexpr):
    """The sums of the KW warps that share columns (warps ``w // KW`` alike), once after the loop; the
    result's element ``j`` is column ``32 (j // 128) + 4g + u`` as in `_lanes` with KW 1."""
    if KW == 1:
        out = acc
    else:
        out = tl.reshape(tl.sum(tl.reshape(acc, (NW // KW, KW, 128)), axis=1), (NW // KW * 128,))
    return out


@triton.jit
def _w_loads(w_ptr, s_ptr, b_ptr, r, RS, colv, cmask, t, GROUP: tl.constexpr, COLS: tl.constexpr,
             EVEN: tl.constexpr):  # fmt: skip
    """A group's weights (``r``: its first word row): per quad and column tile a 16-byte vector of words a
    lane (row ``r + 4q + t``), then the group's scales and biases per tile. Masked only where N is not a
    multiple of the tile (``EVEN``): a masked load still zeroes its registers first, every step."""
    words, sbs = (), ()
    for q in tl.static_range(GROUP // 32):
        for c in tl.static_range(COLS):
            ptrs = w_ptr + (r + 4 * q + t) * RS + colv[c]
            words = words + (tl.load(ptrs) if EVEN else tl.load(ptrs, mask=cmask[c], other=0),)
    for c in tl.static_range(COLS):
        sb = (r * 8 // GROUP) * RS + colv[c]
        if EVEN:
            sbs = sbs + (tl.load(s_ptr + sb), tl.load(b_ptr + sb))
        else:
            m = cmask[c]
            sbs = sbs + (tl.load(s_ptr + sb, mask=m, other=0.0), tl.load(b_ptr + sb, mask=m, other=0.0))
    return words, sbs


@triton.jit
def _x_loads(x_ptr, r, g, t, GROUP: tl.constexpr):
    """The x that lane ``(g, t)`` makes B from: word row ``r + 4 (g % quads) + t``, four int32 of two bf16
    (one 16-byte load; lanes of quads beyond the group's repeat the first)."""
    x32 = x_ptr.to(tl.pointer_type(tl.int32))
    u = tl.arange(0, g.shape[0]) % 4
    return tl.load(x32 + 4 * (r + 4 * (g % (GROUP // 32)) + t) + u)


@triton.jit
def _group_interp(w_ptr, x_ptr, r, RS, cols, cmask, v, GROUP: tl.constexpr):
    """What `group_asm` computes for column tile ``cols`` and each element's group (first word row ``r``),
    element by element in float32: the codes times ``2**-24`` against x scaled by ``v`` and rounded to
    fp16, and the group's sum of that x."""
    c = tl.zeros(cols.shape, tl.float32)
    xs = tl.zeros(cols.shape, tl.float32)
    for row in tl.static_range(GROUP // 8):
        words = tl.load(w_ptr + (r + row) * RS + cols, mask=cmask, other=0)
        for j in tl.static_range(8):
            xh = (tl.load(x_ptr + 8 * (r + row) + j).to(tl.float32) * v).to(tl.float16).to(tl.float32)
            c += ((words >> (4 * j)) & 0xF).to(tl.float32) * (xh * TWO_M24)
            xs += xh
    return c, xs


@triton.jit
def w4k_gemv_mma_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, N, K, rows_per_split,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, ASM: tl.constexpr, NW: tl.constexpr,
    KW: tl.constexpr = 1, PDL: tl.constexpr = False, amax_ptr=None, AMAX_IN: tl.constexpr = False,
    PREFETCH: tl.constexpr = False, SILU_MUL: tl.constexpr = False, CUDA: tl.constexpr = True,
    PRE_WAIT: tl.constexpr = False, EVEN: tl.constexpr = False, RAGGED: tl.constexpr = False,
    EARLY_RELEASE: tl.constexpr = False,
):  # fmt: skip
    """``y [N] = x [K] @ dequant(w)`` for one token: a program takes ``BLOCK_N`` columns (``COLS`` tiles of
    ``32 * NW // KW``, 32 a warp) and ``rows_per_split`` word rows, a step one group (module docstring).

    ``KW``: warps that share columns and split the program's groups between them (warp ``w % KW`` takes
    every KW-th), their sums added once after the loop: more warps in flight for a matrix whose columns
    are few against its K, without split-K's partial tiles (gate_up, whose SiLU epilogue needs all of K
    in one program, had 448 warps on 132 SMs without it). ``RAGGED``: some warp's last step lies past
    the program's rows (they do not divide into KW groups a step): it loads the last group again and
    adds nothing.

    ``PREFETCH``: the next group's loads are issued before this group's math, so its HBM round trip
    overlaps this one's. ``PRE_WAIT`` (with it and ``PDL``): the first group's words, scales and biases
    load before PDL's wait (no kernel writes weights), as in `triton_w4k_h2`. ``AMAX_IN``: x's absmax
    given (``amax_ptr``), else a pass over the program's slice of x. ``SILU_MUL``: two column tiles, the
    second ``N // 2`` on, and ``silu(gate) * up`` written (``y [N // 2]``) with
    `engine.fused_ops.silu_mul`'s rounding. ``EARLY_RELEASE``: PDL's release as the program starts, as in
    `triton_w4k_h2`."""
    CW: tl.constexpr = NW // KW
    COLS: tl.constexpr = BLOCK_N // (32 * CW)
    QUADS: tl.constexpr = GROUP // 32
    tl.static_assert(CW * KW == NW and COLS * 32 * CW == BLOCK_N and COLS <= 2, "tiles of 32 a warp")
    tl.static_assert(QUADS * 32 == GROUP, "group 64 or 128")
    g, t, col, wk = _lanes(NW, KW)
    HALF: tl.constexpr = BLOCK_N // 2
    if SILU_MUL:
        tl.static_assert(COLS == 2 and SPLIT == 0, "SILU_MUL: two column tiles, no split-K")
        cols0 = tl.program_id(0) * HALF + col
        colv, cmask = (cols0, cols0 + N // 2), (cols0 < N // 2, cols0 < N // 2)
    else:
        cols0 = tl.program_id(0) * BLOCK_N + col
        colv, cmask = (), ()
        for c in tl.static_range(COLS):
            colv, cmask = colv + (cols0 + c * 32 * CW,), cmask + (cols0 + c * 32 * CW < N,)
    r0 = tl.program_id(1) * rows_per_split
    r1 = tl.minimum(r0 + rows_per_split, K // 8)
    STEP: tl.constexpr = GROUP // 8
    rw = r0 + wk * STEP  # each element's warp's group
    if RAGGED:
        rw = tl.minimum(rw, r1 - STEP)
    EARLY: tl.constexpr = PREFETCH and PRE_WAIT
    if EARLY_RELEASE:
        pdl.release(PDL)
    if not EARLY:
        pdl.wait(PDL)
    if PREFETCH:
        words, sbs = _w_loads(w_ptr, s_ptr, b_ptr, rw, N, colv, cmask, t, GROUP, COLS, EVEN)
    if EARLY:
        pdl.wait(PDL)
    if PREFETCH:
        xp = _x_loads(x_ptr, rw, g, t, GROUP)
    if AMAX_IN:
        v, inv = _h2_scale_of(tl.load(amax_ptr), 15, 24)
    else:
        v, inv = _h2_scale(x_ptr, r0 * 8, r1 * 8, 15, 24)  # max |x * v| in [2**14, 2**15): fp16, no overflow
    vt = tl.full(g.shape, v, tl.float32)
    acc_c = (tl.zeros(g.shape, tl.float32),) * COLS
    acc_x = (tl.zeros(g.shape, tl.float32),) * COLS
    for r in range(r0, r1, KW * STEP):
        rw = r + wk * STEP
        if RAGGED:  # past the program's rows: the last group again, added as nothing
            live = rw < r1
            rw = tl.minimum(rw, r1 - STEP)
        if PREFETCH:  # the next group's loads before this one's math (the last group again after the last)
            rn = tl.minimum(rw + KW * STEP, r1 - STEP)
            nxt_w, nxt_sb = _w_loads(w_ptr, s_ptr, b_ptr, rn, N, colv, cmask, t, GROUP, COLS, EVEN)
            nxt_x = _x_loads(x_ptr, rn, g, t, GROUP)
        else:
            words, sbs = _w_loads(w_ptr, s_ptr, b_ptr, rw, N, colv, cmask, t, GROUP, COLS, EVEN)
            xp = _x_loads(x_ptr, rw, g, t, GROUP)
        if ASM:
            out = _group_mma(xp, vt, words, QUADS, COLS)
            cs, xs = out[:COLS], out[COLS]
        else:
            cs = ()
            for c in tl.static_range(COLS):
                cq, xs = _group_interp(w_ptr, x_ptr, rw, N, colv[c], cmask[c], v, GROUP)
                cs = cs + (cq,)
        an_c, an_x = (), ()
        for c in tl.static_range(COLS):
            sc, bc = sbs[2 * c].to(tl.float32), sbs[2 * c + 1].to(tl.float32)
            if RAGGED:
                sc, bc = tl.where(live, sc, 0.0), tl.where(live, bc, 0.0)
            an_c = an_c + (acc_c[c] + sc * cs[c],)
            an_x = an_x + (acc_x[c] + bc * xs,)
        acc_c, acc_x = an_c, an_x
        if PREFETCH:
            words, sbs, xp = nxt_w, nxt_sb, nxt_x
    if not EARLY_RELEASE:
        pdl.release(PDL)
    _, t, col, _ = _lanes(CW, 1)  # the layout of the warps' sums (`_warp_sum`)
    first = t == 0  # the four lanes of a column hold the same sums: one writes
    out = ()
    for c in tl.static_range(COLS):
        out = out + ((_warp_sum(acc_c[c], NW, KW) + _warp_sum(acc_x[c], NW, KW) * TWO_M24) * inv,)
    if SILU_MUL:
        dt: tl.constexpr = y_ptr.dtype.element_ty
        cols0 = tl.program_id(0) * HALF + col
        live_c = first & (cols0 < N // 2)
        tl.store(y_ptr + cols0, silu_mul_math(out[0].to(dt), out[1].to(dt), dt, CUDA), mask=live_c)
    else:
        for c in tl.static_range(COLS):
            cols = tl.program_id(0) * BLOCK_N + c * 32 * CW + col
            if SPLIT:
                tl.store(ws_ptr + tl.program_id(1) * N + cols, out[c], mask=first & (cols < N))
            else:
                tl.store(y_ptr + cols, out[c].to(y_ptr.dtype.element_ty), mask=first & (cols < N))
    if SPLIT:
        _finish_split(y_ptr, ws_ptr, lock_ptr, 1, N, N, 1, BLOCK_N, SPLIT)
