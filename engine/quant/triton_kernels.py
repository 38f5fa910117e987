"""Triton kernels for weight-only int8 / int4 matmuls at decode sizes (M <= 16 rows) and dequantization.

Why our own: torch's int4 GEMV (tinygemm) moves ~1 TB/s of the H100's 3 TB/s, and the 2:4 kernels of
torchao and vLLM are gone (../shared/NOTES.md). Decode is memory-bound, so each kernel is built around
reading every weight byte once, in wide coalesced rows, with enough programs (split-K) to keep HBM busy.

Layouts (made by `engine.quant.gpu`; scales/biases fp16, ``[G, N]`` so one group's row is contiguous):
- int8:  ``w8 [K, N]`` int8, ``s [N]`` fp32: ``y = (x @ w8) * s``.
- int4:  ``w4 [K, N // 8]`` int32, nibble ``i`` of word ``j`` in row ``k`` is ``q[n = 8j + i, k]``;
  ``w = q * s + b`` per group of ``GROUP`` rows of K. N-major packing lets activation sparsity (TEAL) skip
  whole rows: a zero activation ``x[k]`` means row ``k`` (N/2 bytes) is never loaded.
- int4 2:4: ``v [N, K // 16]`` int32 (the 2 kept codes of each 4 along K, 8 per word) and
  ``ix [N, K // 32]`` int32 (their 2-bit positions, 16 per word): half the bytes of dense int4 plus 1/8.
The group identity ``sum_k x_k (q_k s + b) = s * (x . q) + b * sum(x)`` lets every kernel multiply
integer codes (exact in bf16) and apply scale and bias once per group and output, not per weight.
"""

from __future__ import annotations

import triton
import triton.language as tl

from engine import pdl


@triton.jit
def _write_tile(y_ptr, ws_ptr, lock_ptr, acc, rm, rn, mmask, nmask, M, N, stride_ym, SPLIT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """Store an output tile, or, when K is split over programs, this split's partial tile into the fp32
    workspace ``[split, M, N]`` (row stride ``stride_ym``), summed by the tile's last program. ``SPLIT``:
    the number of splits (0: K is not split), a constant so that the sum's loads are issued together."""
    offs = rm[:, None] * stride_ym + rn[None, :]
    omask = mmask[:, None] & nmask[None, :]
    if SPLIT:
        tl.store(ws_ptr + tl.program_id(1) * M * stride_ym + offs, acc, mask=omask)
        _finish_split(y_ptr, ws_ptr, lock_ptr, M, N, stride_ym, BLOCK_M, BLOCK_N, SPLIT)
    else:
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _write_row(y_ptr, part_ptr, out, rn, nmask, SPLIT: tl.constexpr):
    """`_write_tile` for one output row, without the split's sum (a program may write several rows: it
    calls `_finish_split` once after the last); ``part_ptr``: the row's place in the workspace."""
    if SPLIT:
        tl.store(part_ptr + rn, out, mask=nmask)
    else:
        tl.store(y_ptr + rn, out.to(y_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def _write_vec(y_ptr, ws_ptr, lock_ptr, out, rn, nmask, N, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr):
    """`_write_tile` for a one-token kernel's output row (its split's row of the workspace ``[split, N]``)."""
    _write_row(y_ptr, ws_ptr + tl.program_id(1) * N, out, rn, nmask, SPLIT)
    if SPLIT:
        _finish_split(y_ptr, ws_ptr, lock_ptr, 1, N, N, 1, BLOCK_N, SPLIT)


@triton.jit
def _finish_split(y_ptr, ws_ptr, lock_ptr, M, N, stride_ym, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  SPLIT: tl.constexpr):  # fmt: skip
    """Split-K's sum without an fp32 output to zero before and cast after (two graph nodes a GEMV, each a
    few microseconds against GEMVs of 10-30): every program stores its partial tile, takes a ticket from
    its column tile's counter, and the last to arrive adds the partials in split order (the same result
    whichever program finishes first, unlike atomic adds), writes the model dtype and resets the counter
    for the next launch. The barrier puts all of the program's stores before its release; the partials
    are read through L2 (``.cg``), where the other SMs' stores are. The ``SPLIT`` partials are loaded in an
    unrolled loop, all in flight at once: a loop over a runtime count issued them ~4 at a time (ptxas
    unrolls by 4), an L2 round trip (~0.7 us) each, on the critical path of every split GEMV."""
    pid_n = tl.program_id(0)
    splits = tl.num_programs(1)
    tl.debug_barrier()
    ticket = tl.atomic_add(lock_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
    if ticket == splits - 1:
        rm = tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs = rm[:, None] * stride_ym + rn[None, :]
        omask = (rm < M)[:, None] & (rn < N)[None, :]
        parts = ()
        for k in tl.static_range(SPLIT):
            parts = parts + (
                tl.load(ws_ptr + k * M * stride_ym + offs, mask=omask, other=0.0, cache_modifier=".cg"),
            )
        total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in tl.static_range(SPLIT):  # in split order, from zero: the sum of every launch is the same
            total += parts[k]
        tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=omask)
        tl.atomic_xchg(lock_ptr + pid_n, 0)


@triton.jit
def w4_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_ym, thresh,
    groups_per_split,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    SPARSE: tl.constexpr, GATHER: tl.constexpr,
):  # fmt: skip
    """``y[M, N] = x[M, K] @ dequant(w4)``; with ``SPARSE``, |x| < thresh is zero and its row unread.

    ``GATHER``: each output column loads the word holding its nibble (8 neighbours share it through L1)
    and shifts by its own offset, so the codes come out in column order with no register shuffle;
    otherwise one load per word and a reshape of the 8 nibbles. Which is faster is measured per shape."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rw = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    rk = tl.arange(0, GROUP)
    shifts = tl.arange(0, 8) * 4
    mmask = rm < M
    nmask = rn < N
    wmask = rw < N // 8
    g0 = pid_k * groups_per_split
    g1 = tl.minimum(g0 + groups_per_split, K // GROUP)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(g0, g1):
        kk = g * GROUP + rk
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=mmask[:, None], other=0.0)
        if SPARSE:
            x = tl.where(tl.abs(x.to(tl.float32)) >= thresh, x, 0.0).to(x_ptr.dtype.element_ty)
            live = tl.max((x != 0).to(tl.int32), axis=0) > 0  # a row is read if any token needs it
        else:
            live = kk >= 0
        if GATHER:
            words = tl.load(w_ptr + kk[:, None] * (N // 8) + (rn // 8)[None, :],
                            mask=live[:, None] & nmask[None, :], other=0)  # fmt: skip
            q = ((words >> ((rn % 8) * 4)[None, :]) & 0xF).to(x_ptr.dtype.element_ty)
        else:
            words = tl.load(w_ptr + kk[:, None] * (N // 8) + rw[None, :], mask=live[:, None] & wmask[None, :],
                            other=0)  # fmt: skip
            q = (words[:, :, None] >> shifts[None, None, :]) & 0xF
            q = tl.reshape(q, (GROUP, BLOCK_N)).to(x_ptr.dtype.element_ty)
        if BLOCK_M == 1:  # one token: a broadcast-multiply-reduce, no tensor-core padding to 16 rows
            part = tl.sum(x.to(tl.float32)[:, :, None] * q.to(tl.float32)[None, :, :], axis=1)
        else:
            part = tl.dot(x, q)
        xs = tl.sum(x.to(tl.float32), axis=1)
        s = tl.load(s_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
        acc += part * s[None, :] + xs[:, None] * b[None, :]
    _write_tile(y_ptr, ws_ptr, lock_ptr, acc, rm, rn, mmask, nmask, M, N, stride_ym, SPLIT, BLOCK_M, BLOCK_N)


@triton.jit
def w4_gemv_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, N, K, thresh, groups_per_split,
    GROUP: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    SPARSE: tl.constexpr, GATHER: tl.constexpr,
):  # fmt: skip
    """One token: ``y[N] = x[K] @ dequant(w4)`` with a ``[BLOCK_K, BLOCK_N]`` accumulator.

    Why a 2-D accumulator: reducing over K inside the loop costs a cross-warp reduction per step; here
    each element is dequantized (``q * s + b``, one FMA) and multiply-added in place, and the single
    reduction over K happens once, after the loop."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rw = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    rk = tl.arange(0, BLOCK_K)
    shifts = tl.arange(0, 8) * 4
    nmask = rn < N
    wmask = rw < N // 8
    k0 = pid_k * groups_per_split * GROUP
    k1 = tl.minimum(k0 + groups_per_split * GROUP, K)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for k in range(k0, k1, BLOCK_K):
        kk = k + rk
        x = tl.load(x_ptr + kk).to(tl.float32)
        if SPARSE:
            x = tl.where(tl.abs(x) >= thresh, x, 0.0)
            live = x != 0
        else:
            live = kk >= 0
        if GATHER:
            words = tl.load(w_ptr + kk[:, None] * (N // 8) + (rn // 8)[None, :],
                            mask=live[:, None] & nmask[None, :], other=0)  # fmt: skip
            q = ((words >> ((rn % 8) * 4)[None, :]) & 0xF).to(tl.float32)
        else:
            words = tl.load(w_ptr + kk[:, None] * (N // 8) + rw[None, :], mask=live[:, None] & wmask[None, :],
                            other=0)  # fmt: skip
            q = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & 0xF, (BLOCK_K, BLOCK_N)).to(
                tl.float32
            )
        gi = k // GROUP
        s = tl.load(s_ptr + gi * N + rn, mask=nmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + gi * N + rn, mask=nmask, other=0.0).to(tl.float32)
        acc += x[:, None] * (q * s[None, :] + b[None, :])
    _write_vec(y_ptr, ws_ptr, lock_ptr, tl.sum(acc, axis=0), rn, nmask, N, SPLIT, BLOCK_N)


@triton.jit
def w8_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_ym, blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
    MAGIC: tl.constexpr = False, PDL: tl.constexpr = False,
):  # fmt: skip
    """``y[M, N] = (x[M, K] @ w8[K, N]) * s[N]``; ``PDL`` (`engine.pdl`): wait first, release after the loop.

    ``MAGIC``: int8 -> float without I2F (1/8 of the FMA rate on Hopper): ``(v & 0xFF) ^ 0x4B000080`` is the
    float bits of ``2**23 + 128 + v`` (one logic op), minus ``2**23 + 128``; measured against the cast."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mmask = rm < M
    nmask = rn < N
    b0 = pid_k * blocks_per_split
    b1 = tl.minimum(b0 + blocks_per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    pdl.wait(PDL)
    for blk in range(b0, b1):
        kk = blk * BLOCK_K + rk
        kmask = kk < K
        x = tl.load(
            x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0
        )
        w = tl.load(w_ptr + kk[:, None] * N + rn[None, :], mask=kmask[:, None] & nmask[None, :], other=0)
        if MAGIC:
            wf = ((w.to(tl.int32) & 0xFF) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
        else:
            wf = w.to(tl.float32)
        if BLOCK_M == 1:
            acc += tl.sum(x.to(tl.float32)[:, :, None] * wf[None, :, :], axis=1)
        else:
            acc += tl.dot(x, wf.to(x_ptr.dtype.element_ty))
    pdl.release(PDL)
    s = tl.load(s_ptr + rn, mask=nmask, other=0.0)
    acc = acc * s[None, :]
    _write_tile(y_ptr, ws_ptr, lock_ptr, acc, rm, rn, mmask, nmask, M, N, stride_ym, SPLIT, BLOCK_M, BLOCK_N)


@triton.jit
def w4_24_kernel(
    x_ptr, v_ptr, i_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_ym,
    groups_per_split,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    GATHER: tl.constexpr,
):  # fmt: skip
    """2:4 int4: read the kept codes and their positions, gather the matching activations."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    rm = tl.arange(0, BLOCK_M)
    HALF: tl.constexpr = GROUP // 2
    t = tl.arange(0, HALF)
    vshift = tl.arange(0, 8) * 4
    ishift = tl.arange(0, 16) * 2
    g0 = pid_k * groups_per_split
    g1 = tl.minimum(g0 + groups_per_split, K // GROUP)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(g0, g1):
        if GATHER:  # per-value word loads (shared through L1), no register shuffle
            vw = tl.load(v_ptr + rn[:, None] * (K // 16) + g * (GROUP // 16) + (t // 8)[None, :],
                         mask=nmask[:, None], other=0)  # fmt: skip
            v = ((vw >> ((t % 8) * 4)[None, :]) & 0xF).to(tl.float32)
            iw = tl.load(i_ptr + rn[:, None] * (K // 32) + g * (GROUP // 32) + (t // 16)[None, :],
                         mask=nmask[:, None], other=0)  # fmt: skip
            pos = (iw >> ((t % 16) * 2)[None, :]) & 0x3
        else:
            vcol = g * (GROUP // 16) + tl.arange(0, GROUP // 16)
            vw = tl.load(v_ptr + rn[:, None] * (K // 16) + vcol[None, :], mask=nmask[:, None], other=0)
            v = tl.reshape((vw[:, :, None] >> vshift[None, None, :]) & 0xF, (BLOCK_N, HALF)).to(tl.float32)
            icol = g * (GROUP // 32) + tl.arange(0, GROUP // 32)
            iw = tl.load(i_ptr + rn[:, None] * (K // 32) + icol[None, :], mask=nmask[:, None], other=0)
            pos = tl.reshape((iw[:, :, None] >> ishift[None, None, :]) & 0x3, (BLOCK_N, HALF))
        kabs = g * GROUP + (t // 2)[None, :] * 4 + pos
        s = tl.load(s_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
        for m in tl.static_range(BLOCK_M):
            live = m < M
            xg = tl.load(x_ptr + m * stride_xm + kabs, mask=nmask[:, None] & live, other=0.0).to(tl.float32)
            row = tl.sum(v * xg, axis=1) * s + tl.sum(xg, axis=1) * b
            acc += tl.where(rm[:, None] == m, row[None, :], 0.0)
    _write_tile(y_ptr, ws_ptr, lock_ptr, acc, rm, rn, rm < M, nmask, M, N, stride_ym, SPLIT, BLOCK_M, BLOCK_N)


@triton.jit
def dequant_w4_kernel(w_ptr, s_ptr, b_ptr, out_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
    """int4 (N-major) -> ``out [K, N]`` in the model dtype, for prefill's tensor-core GEMM."""
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rw = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    kk = g * GROUP + tl.arange(0, GROUP)
    words = tl.load(w_ptr + kk[:, None] * (N // 8) + rw[None, :], mask=(rw < N // 8)[None, :], other=0)
    q = tl.reshape((words[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 0xF, (GROUP, BLOCK_N))
    s = tl.load(s_ptr + g * N + rn, mask=rn < N, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + g * N + rn, mask=rn < N, other=0.0).to(tl.float32)
    w = q.to(tl.float32) * s[None, :] + b[None, :]
    tl.store(out_ptr + kk[:, None] * N + rn[None, :], w.to(out_ptr.dtype.element_ty), mask=(rn < N)[None, :])


@triton.jit
def dequant_w4_24_kernel(
    v_ptr, i_ptr, s_ptr, b_ptr, out_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr
):
    """2:4 int4 -> dense ``out [N, K]`` (zeros included; the output is zero-filled by the caller)."""
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    HALF: tl.constexpr = GROUP // 2
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    t = tl.arange(0, HALF)
    vw = tl.load(v_ptr + rn[:, None] * (K // 16) + g * (GROUP // 16) + tl.arange(0, GROUP // 16)[None, :],
                 mask=nmask[:, None], other=0)  # fmt: skip
    v = tl.reshape((vw[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 0xF, (BLOCK_N, HALF))
    iw = tl.load(i_ptr + rn[:, None] * (K // 32) + g * (GROUP // 32) + tl.arange(0, GROUP // 32)[None, :],
                 mask=nmask[:, None], other=0)  # fmt: skip
    pos = tl.reshape((iw[:, :, None] >> (tl.arange(0, 16) * 2)[None, None, :]) & 0x3, (BLOCK_N, HALF))
    kabs = g * GROUP + (t // 2)[None, :] * 4 + pos
    s = tl.load(s_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
    w = v.to(tl.float32) * s[:, None] + b[:, None]
    tl.store(out_ptr + rn[:, None] * K + kabs, w.to(out_ptr.dtype.element_ty), mask=nmask[:, None])


@triton.jit
def dequant_w8_kernel(w_ptr, s_ptr, out_ptr, K, N, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """int8 ``w [K, N]`` times its per-column scale -> ``out [K, N]`` in the model dtype (prefill's GEMM).

    One read of a byte and one write a weight. Why not a cast and the scale on the GEMM's output: that
    path added 36 ms to a 2K prefill on the H200 (86 vs 50 ms bf16, bench/RESULTS.md), where the int4
    dequantize kernel adds 5."""
    rk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    mask = (rk < K)[:, None] & nmask[None, :]
    offs = rk[:, None] * N + rn[None, :]
    w = tl.load(w_ptr + offs, mask=mask, other=0).to(tl.float32)
    s = tl.load(s_ptr + rn, mask=nmask, other=0.0)
    tl.store(out_ptr + offs, (w * s[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
