"""Triton flash attention over the paged KV cache, reading K/V blocks in place through the block table.

Why: the gather path copies a sequence's whole prefix into a contiguous tensor for every prefill chunk and
every layer (at 16K context and 2K-token chunks that is ~8x the KV bytes moved per layer), which made our
chunked recompute slower than `transformers`' single SDPA call and put a floor under reuse TTFT.

One kernel serves prefill-with-prefix and decode. A program owns ``BLOCK_M`` rows of one KV head of one
sequence; a row is a (query token, query head of that KV head's GQA group) pair, so K/V tiles are loaded
once per group, and a decode step (1 token x group heads) fills a 16-row tile instead of wasting 15/16.
The KV loop walks one cache block (``BLOCK_N = block_size`` tokens) at a time, stops at the last key the
tile's last query may see (causal), and applies per-(block, head) scales when the cache is int8.
Grid: ``(cdiv(max_q * group, BLOCK_M), kv_heads, num_seqs)`` - static for a fixed batch, so decode steps
can be captured in CUDA graphs. Tested under ``TRITON_INTERPRET=1`` on CPU and against the gather path
and `transformers` on the GPU (bench/engine_gpu.py).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_attn_kernel(
    Q,
    K,
    V,
    KS,
    VS,
    Out,
    TABLES,
    Q_STARTS,
    Q_LENS,
    CTX_LENS,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_sb,
    stride_tb,
    sm_scale,
    GROUP: tl.constexpr,
    HD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    INT8: tl.constexpr,
):
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1)
    sid = tl.program_id(2)
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
    q_ptr = Q + (q_start + tok)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr, mask=row_ok[:, None], other=0.0)
    qpos = ctx - q_len + tok  # absolute position of each row's query
    last_tok = tl.minimum(pid_m * BLOCK_M + BLOCK_M - 1, q_len * GROUP - 1) // GROUP
    hi = ctx - q_len + last_tok + 1  # keys [0, hi) are visible to some row of this tile

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HD], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # exp2
    n = tl.arange(0, BLOCK_N)
    for start in range(0, hi, BLOCK_N):
        blk = tl.load(TABLES + sid * stride_tb + start // BLOCK_N).to(tl.int64)
        base = blk * stride_kb + n[:, None] * stride_kt + kvh * stride_kh + d[None, :]
        k = tl.load(K + base)
        v = tl.load(V + base)
        if INT8:
            k = (k.to(tl.float32) * tl.load(KS + blk * stride_sb + kvh)).to(q.dtype)
            v = (v.to(tl.float32) * tl.load(VS + blk * stride_sb + kvh)).to(q.dtype)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        keep = (start + n)[None, :] <= qpos[:, None]
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptr = Out + (q_start + tok)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(o_ptr, acc.to(Out.dtype.element_ty), mask=row_ok[:, None])


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    meta: dict,
    decode: bool,
) -> torch.Tensor:
    """``q [T, nh, hd]``, caches ``[blocks, block_size, kvh, hd]`` (any block stride) -> ``[T, nh, hd]``."""
    t, nh, hd = q.shape
    _, bs, kvh, _ = k_cache.shape
    assert k_cache.stride(2) == hd and k_cache.stride(3) == 1 and v_cache.stride() == k_cache.stride()
    group = nh // kvh
    out = torch.empty_like(q)
    rows = meta["max_q"] * group
    block_m = 16 if decode or rows <= 16 else (64 if q.device.type == "cpu" else 128)
    int8 = k_scale is not None
    ks = k_scale if int8 else k_cache
    vs = v_scale if int8 else v_cache
    grid = (triton.cdiv(rows, block_m), kvh, meta["tables"].shape[0])
    kw = {} if q.device.type == "cpu" else {"num_warps": 4 if block_m <= 64 else 8, "num_stages": 2}
    _paged_attn_kernel[grid](
        q,
        k_cache,
        v_cache,
        ks,
        vs,
        out,
        meta["tables"],
        meta["q_starts"],
        meta["q_lens"],
        meta["ctx_lens"],
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        ks.stride(0) if int8 else 0,
        meta["tables"].stride(0),
        1.0 / math.sqrt(hd),
        GROUP=group,
        HD=hd,
        BLOCK_N=bs,
        BLOCK_M=block_m,
        INT8=int8,
        **kw,
    )
    return out
