"""The prefill kernel of `engine.quant.prefill_mm`: many rows times a K-packed int4 weight on tensor cores.

Why not the 16-row decode kernels with more rows (`triton_w4k.w4k_mm2_kernel`): they take each nibble
position in its own dot of K = ``BLOCK_R`` (so the codes never need reordering) and gather x at a stride of
8 elements, which suits 16 rows and ran 10-13x slower than a bf16 GEMM at 256-512 rows on an H100
(bench/int4_prefill_probe.py). Here a step's codes are put in K order in registers (three ``tl.join`` and
a reshape: word row r's nibble j is K index ``8r + j``), so each step is one dot over ``8 * BLOCK_R`` of
K against a contiguous x tile, and the codes are the dot's first operand (``y.T = W @ x.T``): on Hopper a
``wgmma`` reads that operand from registers, so the dequantized codes skip shared memory.

Codes enter as exact bf16 ``128 + q`` (`triton_w4k._pair`); a step stays inside one group, so its scale
and bias apply once a step to the fp32 partial: ``s * (x . (128 + q)) + (b - 128 s) * sum(x)``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from engine.quant.triton_w4k import _dot, _pair


@triton.jit
def w4k_prefill_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_ym,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    ASM: tl.constexpr, WIDE: tl.constexpr = False,
):  # fmt: skip
    """``y[M, N] = x[M, K] @ dequant(w)``; program (column tile, row tile); ``BLOCK_R`` word rows a step,
    ``8 * BLOCK_R`` dividing ``GROUP``. ``WIDE``: the step's tile is loaded as ``[8 * BLOCK_R, BLOCK_N]``
    words, each word once per nibble (the repeats come from L1), shifted by 4 x its K index mod 8 and
    dequantized to the model dtype as the dequantize kernel rounds it, for a plain ``x @ w`` dot: no
    register reordering, no per-step rescale."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rr = tl.arange(0, BLOCK_R)
    kk = tl.arange(0, 8 * BLOCK_R)
    nmask = rn < N
    mmask = rm < M
    IEEE: tl.constexpr = x_ptr.dtype.element_ty == tl.float32
    dt: tl.constexpr = x_ptr.dtype.element_ty
    if WIDE:
        acc_w = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        shift = ((kk % 8) * 4)[:, None]
        for r in range(0, K // 8, BLOCK_R):
            words = tl.load(w_ptr + (r + kk // 8)[:, None] * N + rn[None, :], mask=nmask[None, :], other=0)
            g = (r * 8) // GROUP
            s = tl.load(s_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
            w = (((words >> shift) & 0xF).to(tl.float32) * s[None, :] + b[None, :]).to(dt)
            x = tl.load(
                x_ptr + rm[:, None] * stride_xm + (r * 8 + kk)[None, :], mask=mmask[:, None], other=0.0
            )
            acc_w = _dot(x, w, acc_w, IEEE)
        out = y_ptr + rm[:, None] * stride_ym + rn[None, :]
        tl.store(out, acc_w.to(y_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])
        return
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for r in range(0, K // 8, BLOCK_R):
        words = tl.load(w_ptr + (r + rr)[None, :] * N + rn[:, None], mask=nmask[:, None], other=0)  # [BN, BR]
        lo0, hi0 = _pair(words, 0, ASM)  # nibbles 0 and 4
        lo1, hi1 = _pair(words, 1, ASM)
        lo2, hi2 = _pair(words, 2, ASM)
        lo3, hi3 = _pair(words, 3, ASM)
        # [BN, BR, 2, 2, 2] with nibble 4a + 2b + c at [.., a, b, c]: flattened, K index 8r + nibble
        even = tl.join(tl.join(lo0, hi0), tl.join(lo2, hi2))
        odd = tl.join(tl.join(lo1, hi1), tl.join(lo3, hi3))
        codes = tl.reshape(tl.join(even, odd), (BLOCK_N, 8 * BLOCK_R))
        xt = tl.load(x_ptr + rm[None, :] * stride_xm + (r * 8 + kk)[:, None], mask=mmask[None, :], other=0.0)
        step = _dot(codes.to(dt), xt, tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), IEEE)
        g = (r * 8) // GROUP
        s = tl.load(s_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
        xs = tl.sum(xt.to(tl.float32), axis=0)
        acc += step * s[:, None] + (b - 128.0 * s)[:, None] * xs[None, :]
    out = y_ptr + rm[None, :] * stride_ym + rn[:, None]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=nmask[:, None] & mmask[None, :])


def grid(m: int, n: int, block_m: int, block_n: int) -> tuple[int, int]:
    return (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
