"""Triton flash attention over the paged KV cache, reading K/V blocks in place through the block table.

Why: the gather path copies a sequence's whole prefix into a contiguous tensor for every prefill chunk and
every layer, which made chunked recompute slower than `transformers`' single SDPA call and put a floor under
reuse TTFT.

One kernel serves prefill-with-prefix and decode. A program owns ``BLOCK_M`` rows of one KV head of one
sequence; a row is a (query token, query head of that KV head's GQA group) pair, so K/V tiles are loaded
once per group, and a decode step (1 token x group heads) fills a 16-row tile instead of wasting 15/16.

Two things make it fast on long prefixes (measured in bench/engine_gpu.py, see docs/engine.md):
- **Causal mask only on diagonal tiles.** Keys below the tile's first query position are visible to every
  row, so those tiles run an unmasked loop; only the last one or two tiles pay for the mask.
- **Split-KV** (flash-decoding style). 256 new tokens over a 15K history are only 8 x 8 = 64 programs
  (132 SMs on an H100), each walking 240 tiles in series. With ``splits > 1`` each program walks one
  contiguous slice of its tiles and writes an unnormalised partial (acc, running max, sum) to a fp32
  workspace; `_combine_kernel` merges the slices (log-sum-exp weights). ``splits`` is picked per launch
  from the grid size and the number of KV tiles (`plan`); it is static for a CUDA-graph bucket because it
  depends only on the table width there.
With PDL (`engine.pdl`) a program loads its sequence's metadata, table entry and first tile's K/V before
the wait when every key of that tile is older than the step's tokens (``PRE``; -56 us a batch-1 int4 step
on the H200), so after the wait only q and the later tiles remain.
Grid: ``(cdiv(max_q * group, BLOCK_M), kv_heads, num_seqs * splits)``. Tested under ``TRITON_INTERPRET=1``
on CPU against the gather path and `split_reference` (the same split math in torch), and on the GPU against
the gather path and `transformers`.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch
import triton
import triton.language as tl

from engine import pdl
from engine.fused_ops import _interpreted, rope_math

# Overrides for benchmarks/tests: keys of `plan`'s result (block_m, block_n, num_warps, num_stages, splits).
OVERRIDE: dict = {}
# Load the metadata and the first tile's old K/V before PDL's wait (the kernel's PRE; bench A/B: False)
PRE_WAIT = True
# int8 KV: apply each key's scale to its scores and each value's scale to its probabilities instead of
# dequantizing the K/V tiles (an int8 value is exact in bf16/fp16, so the tiles only change dtype): per tile
# BLOCK_M x BLOCK_N multiplies instead of 2 x BLOCK_N x HD multiplies and conversions. Off until timed on a
# GPU (`bash bench/gpu_pending.sh int8kv`).
INT8_FOLD = False
# Prefill over bf16 caches of 64-token blocks on sm_90+: K/V tiles of one cache block come by TMA,
# through on-device tensor descriptors over the pool as rows of ``kvh * hd``, instead of per-thread loads
# (an RTX 4090 has no TMA and keeps them). In the sm_90 SASS the per-thread form at a chat turn's plan
# spills (972 local loads and stores) and issues no asynchronous copies; with TMA 56 and pipelined bulk
# copies. Same bits (compiled tests), also inside a CUDA graph, where the descriptor scratch comes from the
# graph's pool (bench/tma_graph_check.py). H100, ms a layer (`engine.attn_bench`): 257 tokens over 15.6K
# keys 0.255 -> 0.218, 1,536 over 14.1K 0.890 -> 0.750, 2,048 over 16K 1.332 -> 1.060; the 256-token chat
# turn at ~15.6K (bench/engine_gpu.py) 19.2 -> 17.6 ms. ``KB_ENGINE_ATTN_TMA=0`` turns it off.
TMA = os.environ.get("KB_ENGINE_ATTN_TMA", "1") == "1"
# A one-sequence decode grid's fewest KV tiles a split (`plan`; other grids: 4, which keeps the combine
# pass small against long walks). 1 gives each tile its own program, up to 2 waves, so that a context's
# tiles load at once, most of them before PDL's wait, instead of one after another in 8 programs (a KV
# head each): the int4 batch-1 graph step on an H100 2268.7 -> 2213.9 us at 256-512-token tables
# (bench A/B: quant_e2e's 'dsplit' switch). Batches were not measured, so they keep 4.
DECODE_TILES_PER_SPLIT = 1
# Decode rotates q and the new key and stores K/V inside the attention kernel (``ROPE``), not in a RoPE
# launch of its own before it. Off: same bits, and alone 1.4 us faster a launch at a 300-token context
# (bench/attn_rope_probe.py), but the whole int4 model's batch-1 step on an H100 took 2708 us with it
# against 2271 without (bench A/B: quant_e2e's 'ropeattn' switch; not the PRE loads), cause not found.
ROPE_IN_KERNEL = False


@triton.jit
def _tile_kv(K, V, KS, VS, TABLES, tb, kvh, start, ctx, stride_kb, stride_kt, stride_kh, stride_sb,
             dt: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr, HD: tl.constexpr,
             INT8: tl.constexpr, FOLD: tl.constexpr, ok=True):  # fmt: skip
    """One KV tile's keys and values in ``dt`` (``ok`` False: no loads, zeros), and with ``FOLD`` their
    per-key scales ``[BLOCK_N]`` (K and V still as int8 values, converted to ``dt``)."""
    n = start + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HD)
    if BLOCK_N == BS:  # one cache block per tile: one table entry
        blk = tl.load(TABLES + tb + start // BS, mask=ok, other=0).to(tl.int64)
        off = blk * stride_kb + (n - start)[:, None] * stride_kt + kvh * stride_kh + d[None, :]
    else:  # several blocks per tile: per-key table entries (keys past ctx read block 0 and are masked)
        kb = tl.load(TABLES + tb + n // BS, mask=(n < ctx) & ok, other=0).to(tl.int64)
        off = kb[:, None] * stride_kb + (n % BS)[:, None] * stride_kt + kvh * stride_kh + d[None, :]
    k = tl.load(K + off, mask=ok, other=0)
    v = tl.load(V + off, mask=ok, other=0)
    ks = 0.0
    vs = 0.0
    if INT8:
        if BLOCK_N == BS:
            ks = tl.load(KS + blk * stride_sb + kvh, mask=ok, other=0.0)
            vs = tl.load(VS + blk * stride_sb + kvh, mask=ok, other=0.0)
            if FOLD:
                ks = tl.zeros([BLOCK_N], dtype=tl.float32) + ks
                vs = tl.zeros([BLOCK_N], dtype=tl.float32) + vs
            else:
                k = (k.to(tl.float32) * ks).to(dt)
                v = (v.to(tl.float32) * vs).to(dt)
        else:
            ks = tl.load(KS + kb * stride_sb + kvh, mask=ok, other=0.0)
            vs = tl.load(VS + kb * stride_sb + kvh, mask=ok, other=0.0)
            if not FOLD:
                k = (k.to(tl.float32) * ks[:, None]).to(dt)
                v = (v.to(tl.float32) * vs[:, None]).to(dt)
        if FOLD:
            k = k.to(dt)
            v = v.to(dt)
    return k, v, ks, vs


@triton.jit
def _tile_math(acc, l_i, m_i, q, k, v, ks, vs, start, qpos, qk_scale, BLOCK_N: tl.constexpr,
               MASK: tl.constexpr, FOLD: tl.constexpr):  # fmt: skip
    """Online softmax (exp2 domain) over one tile's ``k``, ``v``. ``MASK``: the causal mask (diagonal
    tiles). ``FOLD``: ``k``/``v`` hold int8 values; key ``j``'s scores are scaled by ``ks[j]`` and its
    probabilities by ``vs[j]`` on their way into ``p @ v`` (the softmax sum takes them unscaled)."""
    n = start + tl.arange(0, BLOCK_N)
    s = tl.dot(q, tl.trans(k))
    if FOLD:
        s = s * ks[None, :]
    if MASK:
        s = tl.where(n[None, :] <= qpos[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    if MASK:  # a row with no visible key yet: keep exp2 finite
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])  # one FMA per score
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if FOLD:
        acc = acc * alpha[:, None] + tl.dot((p * vs[None, :]).to(v.dtype), v)
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _tile(acc, l_i, m_i, q, K, V, KS, VS, TABLES, tb, kvh, start, ctx, qpos, stride_kb, stride_kt, stride_kh,
          stride_sb, qk_scale, BS: tl.constexpr, BLOCK_N: tl.constexpr, HD: tl.constexpr, INT8: tl.constexpr,
          MASK: tl.constexpr, FOLD: tl.constexpr, kd=None, vd=None, TMA: tl.constexpr = False,
          knew=None, vnew=None, newpos=-1, NEW: tl.constexpr = False):  # fmt: skip
    """One KV tile: its loads (``TMA``: the tile is cache block ``table[start // BS]``'s rows of head
    ``kvh``, through the descriptors ``kd``/``vd``), then `_tile_math`. ``NEW``: key ``newpos``'s row is
    ``knew``/``vnew`` (``ROPE``: this step's token, not yet in the cache)."""
    if TMA:
        blk = tl.load(TABLES + tb + start // BS).to(tl.int32)
        k = kd.load([blk * BS, kvh * HD])
        v = vd.load([blk * BS, kvh * HD])
        ks = 0.0
        vs = 0.0
    else:
        k, v, ks, vs = _tile_kv(K, V, KS, VS, TABLES, tb, kvh, start, ctx, stride_kb, stride_kt, stride_kh,
                                stride_sb, q.dtype, BS, BLOCK_N, HD, INT8, FOLD)  # fmt: skip
    if NEW:
        k, v = _with_new_row(k, v, knew, vnew, start, newpos, BLOCK_N)
    return _tile_math(acc, l_i, m_i, q, k, v, ks, vs, start, qpos, qk_scale, BLOCK_N, MASK, FOLD)


@triton.jit
def _with_new_row(k, v, knew, vnew, start, newpos, BLOCK_N: tl.constexpr):
    """``k``/``v`` with key ``newpos``'s row (if in this tile) replaced by ``knew``/``vnew`` ``[1, HD]``."""
    hit = (start + tl.arange(0, BLOCK_N) == newpos)[:, None]
    return tl.where(hit, knew, k), tl.where(hit, vnew, v)


@triton.jit
def _new_kv(Q, KN, VN, COS, SIN, t, kvh, head, row_ok, d, stride_qt, stride_qh, stride_knt, stride_knh,
            stride_vnt, stride_vnh, HD: tl.constexpr, CUDA: tl.constexpr):  # fmt: skip
    """``ROPE``: the rows' q (``[R, HD]``) and token ``t``'s key (``[1, HD]``) rotated as
    `fused_ops.rope_qk` rotates them (the same roundings), and its value, from the qkv projection."""
    half: tl.constexpr = HD // 2
    dp = tl.where(d < half, d + half, d - half)[None, :]
    first = (d < half)[None, :]
    c = tl.load(COS + t * HD + d)[None, :]
    s = tl.load(SIN + t * HD + d)[None, :]
    qrow = Q + t * stride_qt + head[:, None] * stride_qh
    ok = row_ok[:, None]
    x = tl.load(qrow + d[None, :], mask=ok, other=0.0)
    q = rope_math(x, tl.load(qrow + dp, mask=ok, other=0.0), c, s, first, Q.dtype.element_ty, CUDA)
    krow = KN + t * stride_knt + kvh * stride_knh
    k = rope_math(tl.load(krow + d[None, :]), tl.load(krow + dp), c, s, first, Q.dtype.element_ty, CUDA)
    v = tl.load(VN + t * stride_vnt + kvh * stride_vnh + d[None, :])
    return q, k, v


@triton.jit(do_not_specialize=["stride_tb", "splits", "t_total"])
def _paged_attn_kernel(Q, K, V, KS, VS, Out, PO, PM, PL, TABLES, Q_STARTS, Q_LENS, CTX_LENS, stride_qt,
                       stride_qh, stride_ot, stride_oh, stride_kb, stride_kt, stride_kh, stride_sb, stride_tb,
                       splits, t_total, n_rows,
                       sm_scale, NH: tl.constexpr, GROUP: tl.constexpr, HD: tl.constexpr, BS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INT8: tl.constexpr,
                       SPLIT: tl.constexpr, PDL: tl.constexpr = False,
                       PRE: tl.constexpr = False, FOLD: tl.constexpr = False,
                       TMA: tl.constexpr = False, KN=None, VN=None, COS=None, SIN=None, SLOTS=None,
                       stride_knt=0, stride_knh=0, stride_vnt=0, stride_vnh=0, ROPE: tl.constexpr = False,
                       CUDA: tl.constexpr = True):  # fmt: skip
    """``PRE`` (with PDL): the metadata and the first tile's K/V, when all its keys are older than this
    step's tokens, load before `pdl.wait`. None of them is written by a kernel that may still run: the
    metadata come from the step's input copy, and this layer's RoPE writes only the new tokens' slots
    (engine.pdl's rule). After the wait only q and the later tiles remain.

    ``ROPE`` (decode, one token a sequence, a cache of q's dtype): ``Q``, ``KN``, ``VN`` are the qkv
    projection's q, k, v before RoPE. Each program rotates its q rows; the program whose tiles hold the
    new key (position ``ctx - 1``) rotates the key, uses it and the value in place of the cache's row, and
    stores both at the token's slot, as `fused_ops.rope_qk` would have before this kernel: the same
    bits, one launch fewer a layer. Nothing ahead in the step writes the cache then, so with ``PRE`` the
    first tile loads before the wait even where it holds the new key."""
    pdl.release(PDL)
    if not PRE:
        pdl.wait(PDL)
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1)
    sid = tl.program_id(2) // splits
    split = tl.program_id(2) % splits
    q_len = tl.load(Q_LENS + sid)
    if pid_m * BLOCK_M >= q_len * GROUP:
        return
    q_start = tl.load(Q_STARTS + sid)
    ctx = tl.load(CTX_LENS + sid)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len * GROUP
    tok = rows // GROUP
    head = kvh * GROUP + rows % GROUP
    d = tl.arange(0, HD)
    qpos = ctx - q_len + tok  # absolute position of each row's query
    first_tok = pid_m * BLOCK_M // GROUP
    last_tok = tl.minimum(pid_m * BLOCK_M + BLOCK_M - 1, q_len * GROUP - 1) // GROUP
    n_tiles = tl.cdiv(ctx - q_len + last_tok + 1, BLOCK_N)  # keys [0, hi) are visible to some row
    n_full = (ctx - q_len + first_tok + 1) // BLOCK_N  # tiles whose keys every row sees: no mask
    per = tl.cdiv(n_tiles, splits)
    t0 = split * per
    t1 = tl.minimum(t0 + per, n_tiles)
    tb = sid * stride_tb
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HD], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # exp2
    newpos = ctx - 1
    owns_new = ROPE & (t0 * BLOCK_N <= newpos) & (newpos < t1 * BLOCK_N)  # the new key lies in its tiles
    if ROPE:  # the new key's tile goes the masked way (the same bits where all its keys are visible), so
        n_full = newpos // BLOCK_N  # only that loop swaps the new row in: fewer registers in the other
    if PRE:  # keys all older than this step's tokens: not written by a kernel that may still run
        if ROPE:  # noqa: SIM108 - the cache's rows are all older; the new row comes after the wait
            early = t0 < t1
        else:
            early = (t0 < t1) & ((t0 + 1) * BLOCK_N <= ctx - q_len)
        k0, v0, ks0, vs0 = _tile_kv(K, V, KS, VS, TABLES, tb, kvh, t0 * BLOCK_N, ctx, stride_kb, stride_kt,
                                    stride_kh, stride_sb, Q.dtype.element_ty, BS, BLOCK_N, HD, INT8, FOLD,
                                    early)  # fmt: skip
        pdl.wait(PDL)
    knew = None
    vnew = None
    if ROPE:
        q, knew, vnew = _new_kv(Q, KN, VN, COS, SIN, q_start, kvh, head, row_ok, d, stride_qt, stride_qh,
                                stride_knt, stride_knh, stride_vnt, stride_vnh, HD, CUDA)  # fmt: skip
        slot = tl.load(SLOTS + q_start)
        row = (slot // BS) * stride_kb + (slot % BS) * stride_kt + kvh * stride_kh + d[None, :]
        tl.store(K + row, knew, mask=owns_new)
        tl.store(V + row, vnew, mask=owns_new)
    else:
        q = tl.load(Q + (q_start + tok)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                    mask=row_ok[:, None], other=0.0)  # fmt: skip
    kd = None
    vd = None
    if TMA:  # the cache as rows of kvh * hd (``stride_kt``): a tile is BLOCK_N (= BS) rows x HD columns
        kd = tl.make_tensor_descriptor(K, shape=[n_rows, stride_kt], strides=[stride_kt, 1],
                                       block_shape=[BLOCK_N, HD])  # fmt: skip
        vd = tl.make_tensor_descriptor(V, shape=[n_rows, stride_kt], strides=[stride_kt, 1],
                                       block_shape=[BLOCK_N, HD])  # fmt: skip
    if PRE:  # noqa: SIM102 - `early` exists only under the constexpr PRE
        if early:  # a tile before n_full: no mask (ROPE: maybe the last, masked as any may be)
            if ROPE:
                k0, v0 = _with_new_row(k0, v0, knew, vnew, t0 * BLOCK_N, newpos, BLOCK_N)
            acc, l_i, m_i = _tile_math(acc, l_i, m_i, q, k0, v0, ks0, vs0, t0 * BLOCK_N, qpos, qk_scale,
                                       BLOCK_N, ROPE, FOLD)  # fmt: skip
            t0 = t0 + 1
    for t in range(t0, tl.minimum(t1, n_full)):
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, K, V, KS, VS, TABLES, tb, kvh, t * BLOCK_N, ctx, qpos,
                              stride_kb, stride_kt, stride_kh, stride_sb, qk_scale, BS, BLOCK_N, HD, INT8,
                              False, FOLD, kd, vd, TMA)  # fmt: skip
    for t in range(tl.maximum(t0, n_full), t1):
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, K, V, KS, VS, TABLES, tb, kvh, t * BLOCK_N, ctx, qpos,
                              stride_kb, stride_kt, stride_kh, stride_sb, qk_scale, BS, BLOCK_N, HD, INT8,
                              True, FOLD, kd, vd, TMA, knew, vnew, newpos, ROPE)  # fmt: skip
    if SPLIT:  # unnormalised partials; `_combine_kernel` merges the splits
        r = (split * t_total + q_start + tok) * NH + head
        tl.store(PO + r[:, None] * HD + d[None, :], acc, mask=row_ok[:, None])
        tl.store(PM + r, m_i, mask=row_ok)
        tl.store(PL + r, l_i, mask=row_ok)
    else:
        acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_ptr = Out + (q_start + tok)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(o_ptr, acc.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit(do_not_specialize=["splits", "t_total"])
def _combine_kernel(Out, PO, PM, PL, stride_ot, stride_oh, splits, t_total, NH: tl.constexpr,
                    HD: tl.constexpr, MAX_S: tl.constexpr, PDL: tl.constexpr = False):  # fmt: skip
    """Merge split partials of one (token, head): weights 2^(m_s - max m); empty splits weigh 0."""
    pdl.start(PDL)
    t = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, MAX_S)
    ok = s < splits
    r = (s * t_total + t) * NH + h
    m = tl.load(PM + r, mask=ok, other=float("-inf"))
    lsum = tl.load(PL + r, mask=ok, other=0.0)
    w = tl.math.exp2(m - tl.max(m, 0))
    w = tl.where(ok, w, 0.0)
    d = tl.arange(0, HD)
    acc = tl.load(PO + r[:, None] * HD + d[None, :], mask=ok[:, None], other=0.0)
    o = tl.sum(acc * w[:, None], 0) / tl.sum(lsum * w, 0)
    tl.store(Out + t * stride_ot + h * stride_oh + d, o.to(Out.dtype.element_ty))


@lru_cache(maxsize=8)
def _has_tma(device: torch.device) -> bool:
    """Hopper and later (the interpreter, in tests, runs descriptors anywhere); an RTX 4090 has none."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 9


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def _descriptor_scratch() -> None:
    """Triton writes on-device tensor descriptors to global scratch it asks this allocator for (inside a
    CUDA graph capture, from the graph's pool). Set at every such launch: Triton keeps the allocator in a
    context variable, which a thread does not inherit, and the engine launches from its own loop thread
    (set once at start-up, in the thread capturing graphs, the loop's first prefill failed on the H100)."""
    triton.set_allocator(_scratch)


@lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(
    rows: int,
    max_ctx: int,
    num_seqs: int,
    kvh: int,
    bs: int,
    decode: bool,
    device: torch.device,
    tma: bool = False,
) -> dict:
    """Tile shape, warps, pipelining depth and KV splits for one launch (pure function of static sizes).

    Measured on the H100 (engine/attn_bench.py, docs/engine.md): prefill tiles of 128 rows x 128 keys,
    8 warps, 3 stages ran 377-396 TFLOP/s on 1.5K-2K new tokens over 8K-16K keys (64-key tiles: 337-347).
    A prefill grid smaller than one wave of the SMs (a chat turn over a long history) takes 128 x 64 tiles
    with 4 warps instead, two programs an SM, and is split up to two programs an SM: 257 new tokens over
    15.6K keys (72 programs) took 0.256 ms at 3 splits against 0.355 for 128 x 128 tiles and 8 warps
    unsplit (the plan before, since 72 programs left no whole second split), and 0.310 against 0.548 ms
    with int8 KV, whose in-register dequantization suits the narrower tile. A decode grid is split up to
    two waves (1 token over 16K keys: 32 splits 0.042 ms vs 0.376 unsplit). At least 4 tiles per split:
    the combine pass reads every split's partial, so splitting short contexts costs more than it gains
    (one sequence's decode: `DECODE_TILES_PER_SPLIT`, a tile).

    ``tma`` (K/V tiles by TMA, see `TMA`; only with 64-token blocks, the size it was measured at, where a
    tile is one block): every prefill takes 128 x 64 tiles with 4 warps, and a grid of one to three waves
    is split in two. H100, against 128 x 128 tiles and 8 warps unsplit: 1,536 new
    tokens over 14.1K keys (384 programs, 2.9 waves) 0.890 -> 0.750 ms at 2 splits (0.887 at 1); 2,048
    over 16K (512 programs, 3.9 waves) 1.332 -> 1.060 ms at 1 split (1.140 at 2).
    """
    cpu = device.type == "cpu"
    small = decode or rows <= 16
    block_m = 16 if small else (64 if cpu else 128)
    block_n = bs if cpu else (64 if small else 128)
    cfg = {"block_m": block_m, "block_n": block_n, "num_warps": 4 if block_m <= 64 else 8, "num_stages": 3}
    sms = _num_sms(device)
    few = not (small or cpu) and triton.cdiv(rows, block_m) * kvh * num_seqs < sms  # under one wave
    tma = tma and bs == 64 and not (small or cpu)
    if few or tma:
        cfg.update(block_n=64, num_warps=4)
    cfg.update({k: v for k, v in OVERRIDE.items() if k != "splits"})
    progs = triton.cdiv(rows, cfg["block_m"]) * kvh * num_seqs
    tiles = triton.cdiv(max_ctx, cfg["block_n"])
    want = triton.cdiv(2 * sms, progs) if small else (2 * sms if few else sms) // progs
    if tma and sms <= progs < 3 * sms:
        want = 2
    per = DECODE_TILES_PER_SPLIT if decode and num_seqs == 1 else 4
    splits = min(want, tiles // per, 32) if tiles >= 2 * per else 1
    cfg["splits"] = max(1, OVERRIDE.get("splits", splits))
    return cfg


def fuses_rope(q: torch.Tensor, k_cache: torch.Tensor, k_scale: torch.Tensor | None, meta: dict,
               decode: bool) -> bool:  # fmt: skip
    """Whether `paged_attention` can take RoPE and the K/V store (``rope``): `ROPE_IN_KERNEL` on, a decode
    step (one token a sequence), a cache of q's dtype (int8 KV rescales whole blocks on a write)."""
    one_token = decode and meta.get("max_q") == 1
    return ROPE_IN_KERNEL and one_token and k_scale is None and k_cache.dtype == q.dtype


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    meta: dict,
    decode: bool,
    rope: tuple | None = None,
) -> torch.Tensor:
    """``q [T, nh, hd]``, caches ``[blocks, block_size, kvh, hd]`` (any block stride) -> ``[T, nh, hd]``.

    ``rope = (k, v, cos, sin, slots)`` (`fuses_rope`): ``q``, ``k [T, kvh, hd]`` and ``v`` come from the
    qkv projection before RoPE (``cos``/``sin`` ``[T, 1, hd]``); the kernel rotates them and stores K and
    V at ``slots``, as `engine.fused_ops.rope_qk` does, so no RoPE launch goes before it."""
    t, nh, hd = q.shape
    _, bs, kvh, _ = k_cache.shape
    assert k_cache.stride(2) == hd and k_cache.stride(3) == 1 and v_cache.stride() == k_cache.stride()
    group = nh // kvh
    n_seqs = meta["tables"].shape[0]
    max_ctx = meta.get("max_ctx") or meta["tables"].shape[1] * bs
    int8 = k_scale is not None
    # decode keeps per-thread loads: its programs are short, and creating the descriptors cost more than
    # they saved (H100: 1 token over 16K keys 0.079 -> 0.122 ms, 32 x 192 keys 0.020 -> 0.093 ms)
    rows_2d = k_cache.stride(0) == bs * k_cache.stride(1)  # the pool as rows of kvh * hd
    tma = TMA and not (int8 or decode) and rows_2d and _has_tma(q.device)
    cfg = plan(meta["max_q"] * group, max_ctx, n_seqs, kvh, bs, decode, q.device, tma)
    tma = tma and cfg["block_n"] == bs  # a tile is one cache block
    splits = cfg["splits"]
    out = torch.empty_like(q)
    ks = k_scale if int8 else k_cache
    vs = v_scale if int8 else v_cache
    if splits > 1:
        po = torch.empty(splits, t, nh, hd, dtype=torch.float32, device=q.device)
        pm = torch.empty(splits, t, nh, dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
    else:
        po = pm = pl = out
    grid = (triton.cdiv(meta["max_q"] * group, cfg["block_m"]), kvh, n_seqs * splits)
    if tma:
        _descriptor_scratch()
    rope_kw: dict = {}
    if rope is not None:
        kn, vn, cos, sin, slots = rope
        if not fuses_rope(q, k_cache, k_scale, meta, decode) or kn.stride(2) != 1 or vn.stride(2) != 1:
            raise ValueError("RoPE in the attention kernel: decode rows, a cache of q's dtype, unit strides")
        rope_kw = {
            "KN": kn, "VN": vn, "SLOTS": slots,
            "COS": cos.reshape(t, hd).contiguous(), "SIN": sin.reshape(t, hd).contiguous(),
            "stride_knt": kn.stride(0), "stride_knh": kn.stride(1),
            "stride_vnt": vn.stride(0), "stride_vnh": vn.stride(1), "ROPE": True, "CUDA": not _interpreted(),
        }  # fmt: skip
    pdl_kw = pdl.kwargs(q)  # launched with PDL (Hopper): see engine.pdl
    kw = {} if q.device.type == "cpu" else {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    _paged_attn_kernel[grid](
        q, k_cache, v_cache, ks, vs, out, po, pm, pl,
        meta["tables"], meta["q_starts"], meta["q_lens"], meta["ctx_lens"],
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), ks.stride(0) if int8 else 0,
        meta["tables"].stride(0), splits, t, k_cache.shape[0] * bs, 1.0 / math.sqrt(hd),
        NH=nh, GROUP=group, HD=hd, BS=bs, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], INT8=int8,
        SPLIT=splits > 1, PRE=PRE_WAIT, FOLD=int8 and INT8_FOLD, TMA=tma, **rope_kw, **kw, **pdl_kw,
    )  # fmt: skip
    if splits > 1:
        ckw = {} if q.device.type == "cpu" else {"num_warps": 4}
        _combine_kernel[(t, nh)](
            out, po, pm, pl, out.stride(0), out.stride(1), splits, t,
            NH=nh, HD=hd, MAX_S=triton.next_power_of_2(splits), **ckw, **pdl_kw,
        )  # fmt: skip
    return out
