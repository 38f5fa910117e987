"""Activation-sparse (TEAL) int4 GEMV for one token: only the weight rows of live activations are read.

Why a kernel of its own: the dense one-token GEMV (`triton_w4k_h2`) reads K-packed words, 8 codes of one
column along K, so a zero activation frees no whole word. Here the weight is N-packed (``w [K, N // 8]``
int32, nibble ``i`` of word ``(k, j)`` is ``q[8j + i, k]``), so a row ``k`` of N/2 bytes is skipped whole
when ``x[k]`` is zero. Masked loads alone save bytes but not instructions, and the GEMV is bound by issue
(bench/RESULTS.md), so the live rows are first listed (`teal_compact_kernel`) and the GEMV loops over
the list: its loads and arithmetic both scale with the live rows.

The list is cut in chunks of ``R`` entries, each within one quantization group (a group's last chunk is
padded with entries of ``x = 0``, whose loads are masked off), so one chunk takes one scale and bias row.
A chunk's products are summed in packed fp16 (a ``lop3``, ``sub.f16x2`` and ``fma.f16x2`` per pair of
weights, as in `triton_w4k_h2`; nibbles ``j`` and ``j + 4`` of a word are columns ``8w + j`` and
``8w + j + 4``, both times the same ``x[k]``), then scaled into float32 accumulators. To keep those sums in
fp16's range, x is scaled by a power of two fitted to its absmax (exact, undone at the end).

Entry layout (int32 ``[slots, 4]``, written by the compaction): row index ``k``, ``x * v`` as an f16x2 pair
(both halves equal), ``x * v / 16`` likewise (for the odd nibbles, whose codes come out times 16), and
``x * v`` as float32 bits (its sum is the bias term). Under Triton's interpreter (no inline PTX) the pair
slots hold the fp16-rounded value as float32 bits. Scales and biases are stored with each 8-column block
reordered ``0 4 1 5 2 6 3 7``, so a word's pair ``j`` reads its two columns' scales side by side.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine import pdl
from engine.quant.formats import Int4Weight
from engine.quant.gpu import GpuWeight
from engine.quant.triton_kernels import _finish_split, _write_row
from engine.quant.triton_w4k_h2 import H2_DENORM, H2_OFFSET, _h2_scale_of

ENTRY = 4  # int32 words an entry: k, x pair, x / 16 pair, x (float32 bits)
PAIR_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # columns of an 8-column block, in the stored scale order


def tx_for(rows: int, denorm: bool) -> int:
    """The exponent range x is scaled into for chunks of ``rows``: ``rows * 15 * 2**TX`` (the largest sum
    of a chunk's products in one fp16 half) stays under 65504. With ``denorm`` (codes as fp16 subnormals,
    ``q * 2**-24``) the sums are tiny: x takes fp16's whole range."""
    return 15 if denorm else 12 - (rows.bit_length() - 1)


@triton.jit
def _pair(x, ASM: tl.constexpr):
    """``(x, x)`` rounded to fp16 as one f16x2 word (the interpreter: the rounded value's float32 bits)."""
    if ASM:
        out = tl.inline_asm_elementwise(
            "cvt.rn.f16x2.f32 $0, $1, $1;", "=r,f", [x], dtype=tl.int32, is_pure=True, pack=1
        )
    else:
        out = x.to(tl.float16).to(tl.float32).to(tl.int32, bitcast=True)
    return out


@triton.jit
def teal_compact_kernel(
    x_ptr, thresh, ent_ptr, meta_ptr, K, GROUP: tl.constexpr, GP: tl.constexpr, R: tl.constexpr,
    TX: tl.constexpr, ASM: tl.constexpr, DENORM: tl.constexpr = False, PDL: tl.constexpr = False,
):  # fmt: skip
    """List the live entries of one row ``x [K]`` (``|x| >= thresh``), grouped and padded to chunks of
    ``R``; ``meta``: the chunk count and the inverse of x's scale (float32 bits). One program: a row of
    at most a few ten thousand values, so its cost is the launch and a pass, not the list."""
    pdl.start(PDL)
    g = tl.arange(0, GP)
    k = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    inside = k < K
    x = tl.load(x_ptr + k, mask=inside, other=0.0).to(tl.float32)
    live = (tl.abs(x) >= thresh) & inside & (x != 0.0)
    LCU: tl.constexpr = 24 if DENORM else 0  # the GEMV's codes are q * 2**-LCU
    v, inv = _h2_scale_of(tl.max(tl.max(tl.abs(x), axis=1), axis=0), TX, LCU)
    count = tl.sum(live.to(tl.int32), axis=1)
    chunks = (count + R - 1) // R
    first = (tl.cumsum(chunks, axis=0) - chunks) * R  # each group's first slot
    slot = first[:, None] + tl.cumsum(live.to(tl.int32), axis=1) - 1
    xv = x * v
    e = ent_ptr + slot * 4
    tl.store(e, k, mask=live)
    tl.store(e + 1, _pair(xv, ASM), mask=live)
    tl.store(e + 2, _pair(xv * 0.0625, ASM), mask=live)
    tl.store(e + 3, (xv * (1.0 / (1 << LCU))).to(tl.int32, bitcast=True), mask=live)  # the codes' units
    r = tl.arange(0, R)
    pad = (first + count)[:, None] + r[None, :]
    pad_mask = (r[None, :] < (chunks * R - count)[:, None]) & (g < tl.cdiv(K, GROUP))[:, None]
    zero = tl.zeros((GP, R), dtype=tl.int32)
    tl.store(ent_ptr + pad * 4, zero + (g * GROUP)[:, None], mask=pad_mask)  # a row of the group: its scale
    for i in tl.static_range(1, 4):
        tl.store(ent_ptr + pad * 4 + i, zero, mask=pad_mask)
    tl.store(meta_ptr, tl.sum(chunks, axis=0))
    tl.store(meta_ptr + 1, inv.to(tl.int32, bitcast=True))


@triton.jit
def _fma_pair(src, xp, acc, j: tl.constexpr, DENORM: tl.constexpr, ASM: tl.constexpr):
    """``acc += (q_lo, q_hi) * xp`` for the nibbles at bits ``4j`` and ``16 + 4j`` of ``src`` (j = 0, 1),
    in f16x2, the codes ``q * 16**j`` (DENORM: times 2**-24, the masked bits read as subnormals: no
    ``sub.f16x2``); the interpreter: ``acc`` as a trailing pair axis, exact products, sums rounded to fp16."""
    if ASM:
        mask = tl.full(src.shape, 0x000F000F << (4 * j), tl.int32)
        asm: tl.constexpr = H2_DENORM if DENORM else H2_OFFSET
        out = tl.inline_asm_elementwise(
            asm, "=r,r,r,r,r", [src, mask, xp + tl.zeros(src.shape, tl.int32), acc], dtype=tl.int32,
            is_pure=True, pack=1,
        )  # fmt: skip
    else:
        unit: tl.constexpr = (1 << (4 * j)) / (16777216.0 if DENORM else 1.0)
        codes = tl.join((src >> (4 * j)) & 0xF, (src >> (16 + 4 * j)) & 0xF).to(tl.float32) * unit
        out = (codes * xp.to(tl.float32, bitcast=True) + acc).to(tl.float16).to(tl.float32)
    return out


@triton.jit
def _halves(h, ASM: tl.constexpr):
    """An f16x2 accumulator's two halves as float32 (the interpreter: its trailing pair axis)."""
    if ASM:
        lo, hi = tl.inline_asm_elementwise(
            "mov.b32 {$0, $1}, $2;", "=h,=h,r", [h], dtype=(tl.float16, tl.float16), is_pure=True, pack=1
        )
    else:
        lo, hi = tl.split(h)
    return lo.to(tl.float32), hi.to(tl.float32)


@triton.jit
def _pair_cols(t):
    """A ``[BW, 8]`` tile in the stored order ``0 4 1 5 2 6 3 7`` as eight ``[BW]`` tiles: column ``j``
    at index ``j`` (0-3) and column ``j + 4`` at ``j + 4``."""
    lo, hi = tl.split(tl.reshape(t, (t.shape[0], 4, 2)))  # [BW, 4] each, pair j along the last axis
    l02, l13 = tl.split(tl.reshape(lo, (t.shape[0], 2, 2)))
    h02, h13 = tl.split(tl.reshape(hi, (t.shape[0], 2, 2)))
    l0, l2 = tl.split(l02)
    l1, l3 = tl.split(l13)
    h0, h2 = tl.split(h02)
    h1, h3 = tl.split(h13)
    return l0, l1, l2, l3, h0, h1, h2, h3


@triton.jit
def _chunk_words(ent_ptr, w_ptr, c, rw, wmask, NW, R: tl.constexpr, ok=True):
    """A chunk's entries (k, the two x pairs, x) and weight words ``[BW]`` a row; ``ok`` False: no loads."""
    rows = ()
    for p in tl.static_range(R):
        e = ent_ptr + (c * R + p) * 4
        k = tl.load(e, mask=ok, other=0)
        xi = tl.load(e + 3, mask=ok, other=0)  # float32 bits; 0 past the list and in padding
        live = (tl.zeros(rw.shape, tl.int32) + xi) != 0  # as a tile: the interpreter ands no scalar in
        words = tl.load(w_ptr + k.to(tl.int64) * NW + rw, mask=wmask & live, other=0)
        x = xi.to(tl.float32, bitcast=True)
        rows = rows + (words, tl.load(e + 1, mask=ok, other=0), tl.load(e + 2, mask=ok, other=0), x)
    return rows


@triton.jit
def teal_gemv_kernel(
    ent_ptr, meta_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, N,
    GROUP: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, ASM: tl.constexpr,
    EVEN: tl.constexpr, DENORM: tl.constexpr = True, PREFETCH: tl.constexpr = True, PDL: tl.constexpr = False,
):  # fmt: skip
    """``y [N] = x_live @ dequant(w)`` over the chunks listed by `teal_compact_kernel`; the chunks are
    shared out evenly over the ``SPLIT`` programs of a column tile (the count is known only on the GPU).
    ``PREFETCH``: the next chunk's entries and words load during this chunk's math."""
    BW: tl.constexpr = BLOCK_N // 8
    NW = N // 8
    rw = tl.program_id(0) * BW + tl.arange(0, BW)
    wmask = (rw < NW) | EVEN
    pdl.wait(PDL)
    total = tl.load(meta_ptr)
    inv = tl.load(meta_ptr + 1).to(tl.float32, bitcast=True)
    per = tl.cdiv(total, tl.num_programs(1))
    c0 = tl.program_id(1) * per
    c1 = tl.minimum(c0 + per, total)
    acc = (tl.zeros((BW,), dtype=tl.float32),) * 8  # columns 8w + i
    rows = _chunk_words(ent_ptr, w_ptr, c0, rw, wmask, NW, R, c0 < c1)
    for c in range(c0, c1):
        if PREFETCH:
            ahead = _chunk_words(ent_ptr, w_ptr, c + 1, rw, wmask, NW, R, c + 1 < c1)
        else:
            rows = _chunk_words(ent_ptr, w_ptr, c, rw, wmask, NW, R)
        g = tl.load(ent_ptr + c * R * 4) // GROUP
        sb = g * N + rw[:, None] * 8 + tl.arange(0, 8)[None, :]
        smask = wmask[:, None]
        s = _pair_cols(tl.load(s_ptr + sb, mask=smask, other=0.0).to(tl.float32))
        b = _pair_cols(tl.load(b_ptr + sb, mask=smask, other=0.0).to(tl.float32))
        zero = tl.zeros((BW,), dtype=tl.int32) if ASM else tl.zeros((BW, 2), dtype=tl.float32)
        h = (zero,) * 4
        xs = 0.0
        for p in tl.static_range(R):
            words = rows[4 * p]
            hn = ()
            for j in tl.static_range(4):
                src = words if j < 2 else words >> 8
                hn = hn + (_fma_pair(src, rows[4 * p + 1 + j % 2], h[j], j % 2, DENORM, ASM),)
            h = hn
            xs += rows[4 * p + 3]
        an = ()
        for half in tl.static_range(2):
            for j in tl.static_range(4):
                lo, hi = _halves(h[j], ASM)
                part = lo if half == 0 else hi
                an = an + (acc[j + 4 * half] + part * s[j + 4 * half] + xs * b[j + 4 * half],)
        acc = an
        if PREFETCH:
            rows = ahead
    pdl.release(PDL)
    part_ptr = ws_ptr + tl.program_id(1) * N
    for i in tl.static_range(8):
        cols = rw * 8 + i
        _write_row(y_ptr, part_ptr, acc[i] * inv, cols, wmask, SPLIT)
    if SPLIT:
        _finish_split(y_ptr, ws_ptr, lock_ptr, 1, N, N, 1, BLOCK_N, SPLIT)


def pack_scales(t: torch.Tensor) -> torch.Tensor:
    """Scales or biases ``[G, N]`` with each 8-column block in `PAIR_ORDER` (the GEMV's pair layout)."""
    g, n = t.shape
    order = torch.tensor(PAIR_ORDER, device=t.device)
    return t.reshape(g, n // 8, 8).index_select(2, order).reshape(g, n).contiguous()


def pack_teal(w: Int4Weight) -> GpuWeight:
    """An `Int4Weight` (no 2:4 mask) in this kernel's form: N-packed words, scales and biases reordered."""
    from engine.quant import gpu

    if w.mask is not None or w.shape[0] % 8 or w.shape[1] % w.group:
        raise ValueError("the TEAL GEMV takes dense int4 with N a multiple of 8 and K of the group")
    s, b = gpu._scales(w)
    words = gpu._pack_nibbles(w.q.t().contiguous(), 8, 4)
    n, k = w.shape
    return GpuWeight("int4t", n, k, {"w": words, "s": pack_scales(s), "b": pack_scales(b)}, w.group)


def compact(
    x: torch.Tensor, thresh: float, group: int, rows: int = 16, denorm: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The live-entry list of one row ``x [K]`` (`teal_compact_kernel`): ``(entries, meta)``."""
    from engine.quant.gpu import _asm

    k = x.shape[-1]
    gp = triton.next_power_of_2(-(-k // group))
    ent = torch.empty((k + gp * rows) * ENTRY, dtype=torch.int32, device=x.device)
    meta = torch.empty(2, dtype=torch.int32, device=x.device)
    teal_compact_kernel[(1,)](
        x, float(thresh), ent, meta, k, GROUP=group, GP=gp, R=rows, TX=tx_for(rows, denorm), ASM=_asm(x),
        DENORM=denorm, num_warps=8, **pdl.kwargs(x),
    )  # fmt: skip
    return ent, meta


def teal_matmul(
    g, x: torch.Tensor, thresh: float, block_n: int = 1024, split: int = 0, rows: int = 16, warps: int = 4,
    prefetch: bool = True, denorm: bool = True, listed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:  # fmt: skip
    """``y [1, N] = x [1, K] @ W.T`` with ``|x| < thresh`` dropped, for a weight from `pack_teal`.
    ``split``: programs a column tile (0: about two waves in all); ``listed``: a `compact` of this x
    already made with the same ``rows`` and ``denorm`` (several weights reading one input share it)."""
    from engine.quant.gpu import _asm, _sm_count, split_locks

    if x.shape[0] != 1 or g.kind != "int4t":
        raise ValueError("the TEAL GEMV takes one row and a weight from pack_teal")
    ent, meta = listed if listed is not None else compact(x, thresh, g.group, rows, denorm)
    tiles = -(-g.n // block_n)
    split = split or max(1, round(2 * _sm_count() / tiles))
    y = x.new_empty(1, g.n)
    ws = x.new_empty(split, 1, g.n, dtype=torch.float32) if split > 1 else y
    t = g.tensors
    teal_gemv_kernel[(tiles, split)](
        ent, meta, t["w"], t["s"], t["b"], y, ws, split_locks(x.device), g.n,
        GROUP=g.group, R=rows, BLOCK_N=block_n, SPLIT=split if split > 1 else 0, ASM=_asm(x),
        EVEN=g.n % block_n == 0, DENORM=denorm, PREFETCH=prefetch, num_warps=warps, **pdl.kwargs(x),
    )  # fmt: skip
    return y
